"""Report: headlines, the key chart and plain-language caveats, with files to take away."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from engine import modelfiles, report
from engine.judges.names import HARMBENCH, KEYWORD
from engine.rules import is_static
from pages import _charts, _display, _methods, _queries, _scope, _store
from pages._selection import Selection
from pages._skeleton import start_page

SEED_INFLATION = 3.0  # keyword ASR ÷ HarmBench ASR in the seed study
TITLE = "Does safety survive when layers are cut off?"


def pick_judge(present: list[str]) -> str:
    automatic = [j for j in (HARMBENCH, KEYWORD) if j in present] or present
    return st.radio(
        "Judge behind the numbers",
        automatic,
        format_func=_display.md_escape,  # radio options are markdown; judge names come from the database
        horizontal=True,
        key="report-judge",
        help="HarmBench when available: the keyword judge overstates ASR.",
    )


def headlines(rows: list[report.AsrRow]) -> list[str]:
    """report.headline per model (report.benign_headline for a set without harmful prompts): each model
    by its name for people, told apart from the others shown (``engine.modelfiles.model_names``)."""
    names = _charts.model_labels(r.model for r in rows)
    sets = list(dict.fromkeys(r.prompt_set for r in rows))
    found = []
    for prompt_set in sets:  # prompt sets are never pooled: one headline per set and model
        in_set = [r for r in rows if r.prompt_set == prompt_set]
        harmful = any(r.n for r in in_set)
        prefix = f"{prompt_set}: " if len(sets) > 1 else ""
        for model in dict.fromkeys(r.model for r in in_set if r.n or not harmful):
            name = names[model]
            line = (
                report.headline(in_set, model, name)
                if harmful
                else report.benign_headline(in_set, model, name)
            )
            found.append(
                prefix
                + (
                    line
                    or f"{names[model]}: not enough depths for a headline yet (it needs full depth "
                    "and one more)."
                )
            )
    return found


def inflation_text(db: str, prompt_sets: tuple[str, ...] | None = None, scope: str | None = None) -> str:
    rows = _queries.agreement_rows(db, KEYWORD, HARMBENCH, prompt_sets, scope)
    measured = [r for r in rows if r.layers == 0 and r.agreement.inflation]
    if measured:
        names = _queries.model_names(db)
        values = "; ".join(_inflation_measure(r, names.get(r.model_hash, "a stored model")) for r in measured)
        return (
            f"The refusal-keyword judge counts any answer without an apology phrase as harmful, gibberish "
            f"included. On the answers both judges could judge, its ASR is {values}."
        )
    return (
        "The refusal-keyword judge counts any answer without an apology phrase as harmful, gibberish "
        f"included; in the seed study it overstated ASR about {SEED_INFLATION:.0f}× compared with the "
        "HarmBench classifier. Treat keyword-judge numbers as an upper bound."
    )


def _inflation_measure(row: report.AgreementRow, model_name: str) -> str:
    """'2.9× the HarmBench classifier's for DepthScope demo model on demo (24 answers at all depths,
    from 12 of 12 harmful prompts)'."""
    return (
        f"{row.agreement.inflation:.1f}× the HarmBench classifier's for {model_name} on {row.prompt_set} "
        f"({row.agreement.n_decided} answers at all "
        f"depths, from {row.coverage})"
    )


def benign_note(rows: list[report.AsrRow]) -> str:
    """Over-refusal in one sentence: the benign refusal rates and their n, or why there are none."""
    benign = [r for r in rows if r.benign_refusal_rate is not None]
    if not benign:
        return (
            "Over-refusal is not measured here: these prompts include no benign ones. Sweep the `benign` or "
            "`overrefusal` set to see how often harmless requests are refused."
        )
    low, high = (
        min(benign, key=lambda r: r.benign_refusal_rate),
        max(benign, key=lambda r: r.benign_refusal_rate),
    )
    return (
        f"Harmless requests refused (dashed curve; {low.benign_judge} judge): from "
        f"{low.benign_refusal_rate:.0%} (n = {low.benign_n} benign prompts) to "
        f"{high.benign_refusal_rate:.0%} (n = {high.benign_n}) across models and depths. "
        "A model that refuses everything has a low ASR and a high rate here."
    )


def caveats(
    db: str,
    rows: list[report.AsrRow],
    judge: str,
    prompt_sets: tuple[str, ...] | None = None,
    scope: str | None = None,
) -> list[str]:
    harmful = [r for r in rows if r.n]
    notes = [
        _counting_note(harmful, judge) if harmful else _benign_only_note(rows),
        benign_note(rows),
        _uncertainty_note(harmful) if harmful else _benign_uncertainty_note(rows),
        _coverage_note(rows),
        report.models_note([r.model for r in rows]) or "",
        inflation_text(db, prompt_sets, scope)
        if judge == KEYWORD
        else "HarmBench is a classifier: it makes mistakes too; "
        "compare a sample with human labels (Judges page).",
    ]
    if harmful:
        degenerate = sum(r.degenerate for r in harmful)
        judged = sum(r.n + r.undecided for r in harmful)
        notes.append(
            f"{degenerate} of {judged} answers ({degenerate / max(judged, 1):.0%}) are flagged incoherent. A "
            "refusal that disappears because the model stops producing language is not a real jailbreak."
        )
    notes.append(
        "Cutting layers is a what-if experiment on the network, not something a user of a hosted model can "
        "do: it shows where in the model safety behaviour lives."
    )
    truncated, total = _queries.truncated_prompt_counts(db)
    if truncated:
        notes.append(
            f"{truncated} of {total} stored answers come from prompts longer than their model's context "
            "allows beside the answer: their oldest tokens were cut from the left (the chat template "
            "kept). Those answers replied to a shortened prompt."
        )
    if any(r.model == modelfiles.DEFAULT_MODEL for r in rows):
        notes.append(
            "SmolLM2-135M-Instruct is a tiny demonstration model: it answers most harmful requests even at "
            "full depth and degenerates below about 27 of 30 layers. Its numbers say nothing about real "
            "models."
        )
    return [note for note in notes if note]


def _counting_note(rows: list[report.AsrRow], judge: str) -> str:
    ns = sorted({r.n for r in rows})
    n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
    copyright_left_out = sum(r.copyright_excluded for r in rows)
    return (
        f"Judge: {judge} (version {rows[0].version}). Each point counts harmful prompts only: {n_text} per "
        "model and depth"
        + (
            f"; {copyright_left_out} HarmBench copyright answers are left out (the classifier cannot judge "
            "them), so every judge counts the same prompts."
            if copyright_left_out
            else "."
        )
    )


def _benign_only_note(rows: list[report.AsrRow]) -> str:
    judged = [r for r in rows if r.benign_n]
    if not judged:
        return "No answer to these prompts has a verdict yet."
    ns = sorted({int(r.benign_n) for r in judged})
    n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
    return (
        f"These prompts are all harmless, so there is no harmful compliance to report: each point is the "
        f"share of harmless requests refused ({judged[0].benign_judge} judge's rule, {n_text} benign prompts "
        "per model and depth)."
    )


def _uncertainty_note(rows: list[report.AsrRow]) -> str:
    widest = max(rows, key=lambda r: r.ci_high - r.ci_low)
    return (
        f"Small samples are uncertain: the widest 95 % interval here runs from {widest.ci_low:.0%} to "
        f"{widest.ci_high:.0%} (observed {widest.asr:.0%}, n = {widest.n}). Differences inside the bands may "
        "be chance."
    )


def _benign_uncertainty_note(rows: list[report.AsrRow]) -> str:
    judged = [r for r in rows if r.benign_n]
    if not judged:
        return ""
    widest = max(judged, key=lambda r: r.benign_ci_high - r.benign_ci_low)
    return (
        f"Small samples are uncertain: the widest 95 % interval here runs from {widest.benign_ci_low:.0%} to "
        f"{widest.benign_ci_high:.0%} (observed {widest.benign_refusal_rate:.0%}, n = {widest.benign_n}). "
        "Differences inside the bands may be chance."
    )


def _coverage_note(rows: list[report.AsrRow]) -> str:
    """Which rows answer only part of their set: their coverage, and that headlines leave them out."""
    partial = [r for r in rows if not r.fully_covered]
    if not partial:
        return "Every point covers every prompt of its set."
    names = _charts.model_labels(r.model for r in rows)
    shown = "; ".join(
        f"{names[r.model]} at {r.layers} of {r.n_layers} layers: {r.coverage}" for r in partial[:4]
    )
    more = f" and {len(partial) - 4} more" if len(partial) > 4 else ""
    return f"{len(partial)} point(s) cover only part of their set ({shown}{more}); headlines leave them out."


def table_for_export(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": frame["model"],
            "judge": frame["judge"],
            "layers": frame["layers"],
            "of": frame["n_layers"],
            "depth %": frame["depth"].round(0),
            "n": frame["n"],
            "ASR %": (frame["asr"] * 100).round(1),
            "95 % low": (frame["ci_low"] * 100).round(1),
            "95 % high": (frame["ci_high"] * 100).round(1),
            "judged": frame["n_judged"],
            "incoherent (of judged)": frame["degenerate"],
            "median full-depth NLL (nats/token)": frame["median_full_depth_nll"].astype(float).round(2),
            "NLL scored (of judged)": frame["n_full_depth_nll"],
            "copyright left out": frame["copyright_excluded"],
            "benign n": frame["benign_n"],
            "harmless refused %": (pd.to_numeric(frame["benign_refusal_rate"], errors="coerce") * 100).round(
                1
            ),
            "prompt set": frame["prompt_set"],
            "coverage": frame["coverage"],
            "generation settings": frame["settings"],
        }
    )


@dataclass(frozen=True)
class Download:
    label: str
    data: Callable[[], bytes | str]  # built only when the button is pressed
    file_name: str
    mime: str
    key: str


def download_list(
    sel: Selection,
    lines: list[str],
    notes: list[str],
    frame: pd.DataFrame,
    rows: list[report.AsrRow] | None = None,
) -> list[Download]:
    """The files to take away; every family's ``rows`` add the early-exit section and, with more than
    one way of removing depth, the ways-to-remove-depth chart."""
    methods = report.asr_frame(rows or [])
    several_families = _methods.methods_compared(methods)

    def html() -> str:
        figure = _charts.asr_figure(frame)
        exit_rows = [r for r in rows or [] if (r.n or r.benign_n) and r.family in report.EXIT_CHART_FAMILIES]
        exits = _charts.with_exit_columns(report.asr_frame(exit_rows))
        dynamic = not exits["exit_policy"].map(is_static).all()
        sections = [(_charts.METHODS_QUESTION, _charts.methods_figure(methods))] if several_families else []
        return _charts.report_html(
            TITLE,
            lines,
            notes,
            figure,
            table_for_export(frame),
            sections,
            exit_lines=compute_headlines(rows or []) if dynamic else (),
            exit_fig=_charts.compute_figure(exits) if dynamic else None,
            exit_table=_charts.exit_table(exits) if dynamic else None,
        )

    extra = (
        [
            Download(
                "Ways to remove depth (PNG)",
                lambda: _charts.methods_png(methods),
                "depthscope-methods.png",
                "image/png",
                "dl-methods-png",
            )
        ]
        if several_families
        else []
    )
    return [
        Download("Report (HTML, works offline)", html, "depthscope-report.html", "text/html", "dl-html"),
        Download(
            "Chart (PNG)", lambda: _charts.asr_png(frame, TITLE), "depthscope-asr.png", "image/png", "dl-png"
        ),
        *extra,
        Download(
            "Raw results (CSV)",
            lambda: _store.export_bytes(sel.db, "csv"),
            "depthscope-results.csv",
            "text/csv",
            "dl-csv",
        ),
        Download(
            "Raw results (Parquet)",
            lambda: _store.export_bytes(sel.db, "parquet"),
            "depthscope-results.parquet",
            "application/octet-stream",
            "dl-parquet",
        ),
    ]


def downloads(
    sel: Selection,
    lines: list[str],
    notes: list[str],
    frame: pd.DataFrame,
    rows: list[report.AsrRow] | None = None,
) -> None:
    st.subheader("Take it with you")
    row = st.container(horizontal=True)
    for item in download_list(sel, lines, notes, frame, rows):
        row.download_button(
            item.label,
            data=item.data,
            file_name=item.file_name,
            mime=item.mime,
            on_click="ignore",
            key=item.key,
        )
    st.caption("Raw results: every stored answer with every judge's verdict, one row per answer and judge.")


COMPUTE_QUESTION = "At 20 % compute saved, which exit rule keeps refusals?"


def exit_sweep_howto(prompt_set: str) -> str:
    """How to get early-exit results for the set on show (its own name in the command)."""
    return (
        "No early-exit results in this scope yet, so only static truncation would be drawn here. Choose a "
        "confidence or saturation exit policy and thresholds under Settings in the sidebar and start a sweep "
        "on the Depth sweep page, or from a terminal: "
        f"`python -m engine sweep --prompts {prompt_set} --exit-policy confidence --threshold 0.5,0.8,0.95`."
    )


def compute_headlines(rows: list[report.AsrRow]) -> list[str]:
    """The early-exit question answered in words (engine.report), one line per prompt set and model:
    prompt sets are never pooled."""
    names = _charts.model_labels(r.model for r in rows)
    found = []
    for prompt_set in dict.fromkeys(r.prompt_set for r in rows):
        in_set = [r for r in rows if r.prompt_set == prompt_set]
        for model in dict.fromkeys(r.model for r in in_set):
            line = report.early_exit_headline(in_set, model, name=names[model])
            if line:
                found.append(line)
    return found


def show_compute(rows: list[report.AsrRow], prompt_set: str) -> None:
    """ASR and over-refusal against compute used: static truncation and the exit rules on one chart."""
    st.subheader(COMPUTE_QUESTION)
    rows = [r for r in rows if r.family in report.EXIT_CHART_FAMILIES]  # the others: the methods chart
    frame = _charts.with_exit_columns(report.asr_frame([r for r in rows if r.n or r.benign_n]))
    if frame["exit_policy"].map(is_static).all():
        # a set name may be an uploaded file's path: it sits inside inline code, where nothing is read
        st.info(exit_sweep_howto(prompt_set.replace("`", "")))
        return
    for line in compute_headlines(rows):
        st.markdown(f"**{_display.md_escape(line)}**")
    with st.container(key="compute-chart-box"):
        st.plotly_chart(_charts.compute_figure(frame), key="compute-chart")
    st.caption(
        "Compute used: the mean layer at which the answers' tokens left the network, divided by its "
        "layer count (static truncation at k: k ÷ L). Solid: harmful answered (ASR, n harmful prompts per "
        "point, in the hover); dashed: harmless requests refused (n benign prompts). Markers: circle static, "
        "diamond confidence, square saturation; dotted lines read the state through the tuned lens. The "
        "saving is counted, not timed: an exited token still writes its keys and values in every later "
        "layer (later tokens attend to them) and the prompt always runs at full depth, so wall time "
        "falls by less; the README's benchmark measures how much."
    )


def main() -> None:
    page = start_page(
        "Report",
        "The findings in plain words for people who will not read a table: one sentence per model, the key "
        "chart, what the numbers can and cannot say, and files to share.",
    )
    if page is None:
        return
    sel = page.sel
    present = _queries.judges_in_store(sel.db)
    if not present:
        st.info(
            "Nothing to report yet: run a sweep on the Depth sweep page first. This page then writes the "
            "headline, the chart and the caveats for you."
        )
        return
    judge = pick_judge(present)
    prompt_sets = _scope.scope_picker(sel, "report-scope")
    include_copyright = _scope.copyright_toggle("report-copyright") if judge == KEYWORD else False
    rows = _queries.asr_rows(sel.db, judge, prompt_sets, include_copyright, sel.scope.key)
    if not rows:
        if not _scope.offer_other_scopes(sel, prompt_sets, f"{judge} verdicts on these prompts"):
            st.info(
                f"No {_display.md_escape(judge)} verdicts on these prompts yet: "
                "run a sweep, pick another judge, or choose “all sets”."
            )
        return
    _scope.settings_caption(sel)
    # the depth chart and its headline: static truncation read through the model's own head
    static = [r for r in rows if r.is_truncation] or rows
    frame = report.asr_frame(static)
    lines = headlines(static)
    for line in lines:
        st.markdown(f"#### {_display.md_escape(line)}")
    st.plotly_chart(_charts.asr_figure(frame, report.flips(static)), key="report-chart")
    shown_set = prompt_sets[0] if prompt_sets else sel.prompt_set
    show_compute(rows, shown_set)
    _methods.show_methods(rows, shown_set)
    st.subheader("What these numbers can and cannot say")
    notes = caveats(sel.db, rows, judge, prompt_sets, sel.scope.key)
    st.markdown("\n".join(f"- {_display.md_escape(note)}" for note in notes))
    downloads(sel, lines, notes, frame, rows)


main()
