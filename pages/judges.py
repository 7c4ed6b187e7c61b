"""Judges: where the keyword judge, the HarmBench classifier and human labels agree, and where not."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine import queries, report
from engine.depths import depth_label
from engine.judges.names import HARMBENCH, HARMFUL, JUDGE_ORDER, NOT_HARMFUL, verdict_word
from pages import _charts, _display, _jobs, _paths, _queries, _scope, _store
from pages._selection import Selection
from pages._skeleton import start_page


def _word(value: object) -> str:
    return verdict_word(None if pd.isna(value) else bool(value))


# ---------------------------------------------------------------- agreement


NOT_DEFINED = "not defined"


def _kappa_text(value: float | None) -> str:
    return NOT_DEFINED if value is None or value != value else f"{value:.2f}"


def _inflation_text(value: float | None) -> str:
    return NOT_DEFINED if value is None or value != value else f"{value:.1f}×"


AGREEMENT_HELP = {
    "kappa": "Cohen's kappa: 1 = perfect agreement, 0 = chance level. Not defined when one judge gives the "
    "same verdict on every answer.",
    "inflation": "Judge A's ASR divided by judge B's on the same answers. Not defined when judge B finds no "
    "harmful answer.",
}


def agreement_table(
    rows: list[report.AgreementRow], names: dict[str, str], layer_counts: dict[str, int]
) -> pd.DataFrame:
    """One row per model, set and depth, in words and counts: no empty cells (an undefined statistic
    says so), and short enough to fit the page; the McNemar test is in :func:`test_table`."""

    def depth(row: report.AgreementRow) -> str:
        if row.layers == 0:
            return "all depths"
        total = layer_counts.get(row.model_hash)
        return depth_label(row.layers, total) if total else f"{row.layers} layers"

    return pd.DataFrame(
        {
            "model · set": [names.get(r.model_hash, r.model_hash) + f" · {r.prompt_set}" for r in rows],
            "depth": [depth(r) for r in rows],
            "n": [r.agreement.n_decided for r in rows],
            "coverage": [r.coverage for r in rows],
            "kappa": [_kappa_text(r.agreement.kappa) for r in rows],
            "inflation": [_inflation_text(r.agreement.inflation) for r in rows],
            f"both {HARMFUL}": [r.agreement.both_true for r in rows],
            f"only {rows[0].judge_a}": [r.agreement.a_only for r in rows],
            f"only {rows[0].judge_b}": [r.agreement.b_only for r in rows],
            f"both {NOT_HARMFUL}": [r.agreement.both_false for r in rows],
        }
    )


def coverage_note(rows: list[report.AgreementRow]) -> str:
    """Whether the compared answers cover the whole set, in words: n counts answers, coverage prompts."""
    partial = [r for r in rows if not r.fully_covered]
    lead = (
        "n: answers both judges could judge; coverage: the set's harmful prompts with an answer both judges "
        "looked at (at that depth; at any depth for “all depths”)."
    )
    if not partial:
        return f"{lead} Every row covers every harmful prompt of its set."
    return (
        f"{lead} {len(partial)} of {len(rows)} rows cover only part of their set (e.g. "
        f"{partial[0].coverage}): their agreement speaks for those prompts only."
    )


def test_table(rows: list[report.AgreementRow], names: dict[str, str]) -> pd.DataFrame:
    """McNemar's test of the two judges' disagreements, per row of the agreement table."""
    return pd.DataFrame(
        {
            "model · set": [names.get(r.model_hash, r.model_hash) + f" · {r.prompt_set}" for r in rows],
            "layers": ["all" if r.layers == 0 else str(r.layers) for r in rows],
            "McNemar p": [
                NOT_DEFINED if r.agreement.mcnemar_p is None else f"{r.agreement.mcnemar_p:.3f}" for r in rows
            ],
            "test": [r.agreement.mcnemar_method or NOT_DEFINED for r in rows],
        }
    )


def show_agreement(
    sel: Selection, judge_a: str, judge_b: str, prompt_sets: tuple[str, ...] | None = None
) -> None:
    rows = _queries.agreement_rows(sel.db, judge_a, judge_b, prompt_sets, sel.scope.key)
    if not rows:
        if not _scope.offer_other_scopes(sel, prompt_sets, f"answers judged by both {judge_a} and {judge_b}"):
            names = " and ".join(_display.md_escape(j) for j in (judge_a, judge_b))
            st.info(f"No completion has verdicts from both {names} yet.")
        return
    _scope.settings_caption(sel)
    infos = _queries.stored_models(sel.db)
    names = _queries.model_names(sel.db)
    layer_counts = {i.model_hash: i.n_layers for i in infos}
    options = list(range(len(rows)))
    default = next((i for i, r in enumerate(rows) if r.layers == 0), 0)
    left, right = st.columns([1, 1])
    with left:
        index = st.selectbox(
            "Confusion matrix for",
            options,
            index=default,
            format_func=lambda i: (
                f"{rows[i].prompt_set} · {names.get(rows[i].model_hash, rows[i].model_hash)} · "
                + ("all depths" if rows[i].layers == 0 else f"{rows[i].layers} layers")
            ),
            key="confusion-for",
        )
        chosen = rows[index].agreement
        cols = st.columns(3)
        cols[0].metric("Kappa", _kappa_text(chosen.kappa), help=AGREEMENT_HELP["kappa"])
        cols[1].metric(
            "Inflation",
            _inflation_text(chosen.inflation),
            help=_display.md_escape(
                f"{judge_a}'s ASR divided by {judge_b}'s ASR on the same answers. Not defined when "
                f"{judge_b} finds no harmful answer."
            ),
        )
        cols[2].metric(
            "n",
            chosen.n_decided,
            help=f"Only answers both judges could judge: {rows[index].excluded} left out (a judge undecided, "
            f"or a HarmBench copyright behaviour, which the classifier cannot judge). They answer "
            f"{rows[index].coverage} of the set.",
        )
    with right:
        st.plotly_chart(_charts.confusion_figure(chosen, judge_a, judge_b), key="confusion-chart")
    st.subheader("Per model and depth")
    st.caption(_display.md_escape(coverage_note(rows)))
    _display.fitting_table(
        agreement_table(rows, names, layer_counts),
        keep=2,
        key="agreement",
        column_config={
            name: st.column_config.TextColumn(name, help=text) for name, text in AGREEMENT_HELP.items()
        },
    )
    with st.expander("Is the disagreement one-sided? (McNemar's test, for specialists)"):
        st.dataframe(test_table(rows, names), hide_index=True)


# ---------------------------------------------------------------- disagreements


def show_disagreements(
    sel: Selection, judge_a: str, judge_b: str, prompt_sets: tuple[str, ...] | None = None
) -> None:
    st.subheader("Where they disagree")
    frame = _queries.disagreements(sel.db, judge_a, judge_b, prompt_sets, sel.scope.key)
    if frame.empty:
        st.info("No disagreements: on every answer both judged, they agree.")
        return
    names = _queries.model_names(sel.db)
    listing = pd.DataFrame(
        {
            "model": [names.get(h, h) for h in frame["model_hash"]],
            "layers": frame["layers"],
            "prompt label": frame["label"].fillna("unlabelled") if "label" in frame else "unlabelled",
            judge_a: [_word(v) for v in frame["jailbroken_a"]],
            judge_b: [_word(v) for v in frame["jailbroken_b"]],
            "prompt": frame["prompt_text"],
            "answer": frame["text"],
        }
    )
    st.dataframe(  # long texts in narrow columns, so the table fits the page: read one in full below
        listing,
        hide_index=True,
        height=260,
        column_config={
            "prompt": st.column_config.TextColumn("prompt", width="medium"),
            "answer": st.column_config.TextColumn("answer", width="medium"),
        },
    )
    index = st.selectbox(
        f"Read one in full ({len(frame)} disagreements)",
        range(len(frame)),
        format_func=lambda i: (
            f"#{i + 1} · {listing['model'].iloc[i]} · {listing['layers'].iloc[i]} layers · "
            f"{judge_a}: {listing[judge_a].iloc[i]}, {judge_b}: {listing[judge_b].iloc[i]}"
        ),
        key="disagreement",
    )
    row = listing.iloc[index or 0]
    name_a, name_b = _display.md_escape(judge_a), _display.md_escape(judge_b)
    st.markdown(f"**{name_a}:** {row[judge_a]} · **{name_b}:** {row[judge_b]}")
    st.caption("Prompt")
    st.text(row["prompt"])
    st.caption("Answer")
    st.code(row["answer"] or "(empty)", language=None, wrap_lines=True)


# ---------------------------------------------------------------- HarmBench


HARMBENCH_HELP = (
    "The HarmBench classifier is a fine-tuned Llama-2-13B (`cais/HarmBench-Llama-2-13b-cls`, about 26 GB; "
    "a GPU with 32 GB or more) or Mistral-7B (`cais/HarmBench-Mistral-7b-val-cls`). DepthScope does not "
    "ship or download it: fetch it on a machine with network (`hf download cais/HarmBench-Llama-2-13b-cls "
    f"--local-dir {_paths.EXAMPLE_CLASSIFIER_DIR}`) and give the folder here. {_paths.ALLOW_OTHER_FOLDERS} "
    "Judging runs in the background over every stored answer it has not judged yet."
)


def harmbench_section(sel: Selection, has_verdicts: bool) -> None:
    with st.expander("Judge stored answers with HarmBench", expanded=not has_verdicts):
        st.markdown(HARMBENCH_HELP)
        path = st.text_input(
            "HarmBench classifier folder", key="harmbench-path", placeholder=_paths.EXAMPLE_CLASSIFIER_DIR
        )
        pressed = st.button(
            "Judge stored completions with HarmBench",
            disabled=not path.strip() or _jobs.job_running(),
            key="harmbench-run",
        )
        if pressed:
            classifier, problem = _paths.checked_source(path, "classifier folder")
            if problem:
                st.error(_display.md_escape(problem))
            else:
                start_harmbench(sel, classifier)  # the checked absolute path, not the typed text


def start_harmbench(sel: Selection, path: str) -> None:
    def work(job: _jobs.Job) -> str:
        from engine.judges import get_judge

        job.update(0.0, "loading the classifier")
        judge = get_judge(HARMBENCH, judge_model=path)
        with _store.open_job_store(sel.db) as store:
            written = queries.judge_all_stored(
                store,
                [judge],
                on_batch=lambda done, total: job.update(
                    done / total if total else 1.0, f"{done}/{total} answers"
                ),
                stop=job.stop,
            )
        return f"{written} new HarmBench verdicts."

    _jobs.start_job(HARMBENCH, "HarmBench judging", work)


# ---------------------------------------------------------------- the page


def pick_judges(present: list[str]) -> tuple[str, str]:
    """Judge A among those with verdicts; judge B among all (HarmBench by default)."""
    known = [j for j in JUDGE_ORDER if j in present] + [j for j in present if j not in JUDGE_ORDER]
    others = [*known, *(j for j in JUDGE_ORDER if j not in known)]
    left, right = st.columns(2)
    judge_a = left.selectbox("Judge A", known, index=0, key="judge-a")
    candidates = [j for j in others if j != judge_a]
    default_b = candidates.index(HARMBENCH) if HARMBENCH in candidates else 0
    judge_b = right.selectbox("Judge B", candidates, index=default_b, key="judge-b")
    return judge_a, judge_b


def main() -> None:
    page = start_page(
        "Judges",
        "Two automatic judges decide whether an answer is harmful: a refusal-keyword list (instant but "
        "crude: any answer without “I'm sorry”-style phrases counts, gibberish included) and the HarmBench "
        "classifier. Here you see how often they agree, how much the keyword judge inflates ASR, and the "
        "answers they disagree on.",
    )
    if page is None:
        return
    sel = page.sel
    present = _queries.judges_in_store(sel.db)
    if not present:
        st.info("No verdicts yet. Run a sweep (Depth sweep page) or generate answers in the Prompt explorer.")
        harmbench_section(sel, has_verdicts=False)
        return
    judge_a, judge_b = pick_judges(present)
    if judge_b not in present:
        if judge_b == HARMBENCH:
            st.info(
                "No HarmBench verdicts yet: the classifier needs weights you provide (see below). Until then "
                "only the keyword judge's numbers exist, and they overstate ASR (about 3× in the seed study)."
            )
        else:
            st.info(
                f"No {_display.md_escape(judge_b)} verdicts yet. "
                "Label answers in the Prompt explorer (Your label)."
            )
    else:
        prompt_sets = _scope.scope_picker(sel, "judges-scope")
        show_agreement(sel, judge_a, judge_b, prompt_sets)
        show_disagreements(sel, judge_a, judge_b, prompt_sets)
    harmbench_section(sel, has_verdicts=HARMBENCH in present)


main()
