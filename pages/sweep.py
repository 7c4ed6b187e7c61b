"""Depth sweep: start a background sweep, then read ASR-vs-depth curves, intervals and ranking flips."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from engine import report
from engine.depths import DEFAULT_DEPTHS, DepthError, depth_label, parse_depths, parse_percentages
from engine.judges.names import HARMBENCH, HUMAN, KEYWORD
from engine.rules import is_dynamic
from engine.stats import FLIP_ALPHA, Flip
from engine.store import Store
from engine.sweep import SweepProgress, SweepSpec
from engine.types import GenerationParams, check_draft_layers
from pages import _charts, _display, _jobs, _methods, _models, _paths, _queries, _scope, _store
from pages._selection import OTHER_MODEL, Selection
from pages._sidebar import model_option_labels, model_options, set_title
from pages._skeleton import start_page

DEFAULT_DEPTH_TEXT = ", ".join(f"{d:g}" for d in DEFAULT_DEPTHS)
RAY_ADDRESS_ENV = "DEPTHSCOPE_RAY_ADDRESS"
STAGE_SPAN = {"loading": (0.0, 0.05), "generating": (0.05, 0.9), "judging": (0.9, 1.0), "done": (1.0, 1.0)}


# ---------------------------------------------------------------- starting a sweep


@dataclass(frozen=True)
class Cluster:
    """Where a sweep runs when ``DEPTHSCOPE_RAY_ADDRESS`` is set: a Ray cluster and its actor sizes."""

    address: str
    workers: int = 2
    gpus_per_worker: float = 0.0


def cluster_address() -> str | None:
    return os.environ.get(RAY_ADDRESS_ENV, "").strip() or None


def progress_of(
    progress: SweepProgress, models: tuple[str, ...], *, chunks: int | None = None, workers: int | None = None
) -> tuple[float, str]:
    """One bar over all models: each model gets an equal share, split by stage.

    On a cluster (``workers`` given) generation says how many chunks have been stored so far.
    """
    index = models.index(progress.model) if progress.model in models else 0
    low, high = STAGE_SPAN.get(progress.stage, (0.0, 1.0))
    within = progress.done / progress.total if progress.total else 1.0
    fraction = (index + low + (high - low) * within) / len(models)
    eta = progress.eta_seconds
    eta_text = (
        f", about {eta / 60:.0f} min left" if eta and progress.stage == "generating" and eta > 90 else ""
    )
    name = _display.short_name(progress.model)
    where = f" on {workers} Ray worker(s), {chunks or 0} chunk(s) stored" if workers else ""
    what = {
        "loading": "loading the model" + (f" on {workers} Ray worker(s)" if workers else ""),
        "generating": f"generating {progress.done}/{progress.total} answers{where}{eta_text}",
        "judging": f"judging {progress.done}/{progress.total}",
        "done": "done",
    }.get(progress.stage, progress.stage)
    return fraction, f"{name}: {what}"


def start_sweep(sel: Selection, spec: SweepSpec, cluster: Cluster | None = None) -> None:
    hub = _models.model_hub()

    def work(job: _jobs.Job) -> str:
        from engine.sweep import run_sweep

        if cluster is not None:
            return _run_on_cluster(job, sel, spec, cluster)
        with _store.open_job_store(sel.db) as store:
            summary = run_sweep(
                spec,
                store,
                progress=lambda p: job.update(*progress_of(p, spec.models)),
                stop=job.stop,
                load=hub.load,
            )
        return _summary_text(summary)

    where = f" on the Ray cluster at {cluster.address}" if cluster else ""
    title = f"Sweep: {len(spec.models)} model(s) × {_display.short_name(spec.prompt_set)}{where}"
    _jobs.start_job("sweep", title, work)


def _run_on_cluster(job: _jobs.Job, sel: Selection, spec: SweepSpec, cluster: Cluster) -> str:
    """The same sweep with generation and judging on Ray actors; this process alone writes the store."""
    from engine.executors import WorkerFailedError, make_executor  # ray itself loads inside make_executor
    from engine.sweep import run_sweep

    job.update(0.0, f"connecting to the Ray cluster at {cluster.address}")
    executor = make_executor(
        cluster.address, workers=cluster.workers, gpus_per_worker=cluster.gpus_per_worker, stop=job.stop
    )
    note = getattr(executor, "note", "")  # fewer workers than asked for fit on the cluster
    if note:
        job.update(0.0, note)
    chunks = {"model": "", "stored": 0}

    def show(progress: SweepProgress) -> None:
        if progress.model != chunks["model"] or progress.stage != "generating":
            chunks.update(model=progress.model, stored=0)
        elif progress.done:
            chunks["stored"] += 1  # the sweep reports once per chunk stored
        job.update(*progress_of(progress, spec.models, chunks=chunks["stored"], workers=executor.workers))

    try:
        with _store.open_job_store(sel.db) as store:
            summary = run_sweep(spec, store, progress=show, stop=job.stop, executor=executor)
    except WorkerFailedError as exc:
        raise RuntimeError(
            f"Ray workers failed: {exc}. Stored rows kept; start the sweep again to resume."
        ) from exc
    finally:
        executor.close()
    return f"{_summary_text(summary)} Ran on {executor.workers} Ray worker(s).{f' {note}.' if note else ''}"


def _summary_text(summary) -> str:
    return (
        f"{summary.generated} new completions, {summary.cached} already stored, "
        f"{summary.verdicts} new verdicts."
    )


def sweep_form(sel: Selection, store: Store) -> None:
    models = [m for m in dict.fromkeys([sel.model, *model_options(sel.db)]) if m != OTHER_MODEL]
    n_layers = _models.n_layers_of(sel.model, _models.model_info(sel.model, store))
    with st.form("sweep-form"):
        st.markdown(
            f"**Prompt set:** {_display.md_escape(set_title(sel.prompt_set))} (change it in the sidebar)"
        )
        labels = model_option_labels(models)
        chosen = st.multiselect("Models", models, default=[sel.model], format_func=labels.get)
        left, right = st.columns(2)
        depth_text = left.text_input(
            "Depths, in % of each model's layers",
            value=DEFAULT_DEPTH_TEXT,
            help="k = round(d/100 · L) layers are kept; two depths mapping to the same k run once.",
        )
        limit = right.number_input("Only the first N prompts (0 = all)", min_value=0, value=0, step=1)
        judges = st.multiselect(
            "Judges",
            [KEYWORD, HARMBENCH],
            default=[KEYWORD],
            help="The keyword judge is instant. HarmBench needs the classifier's weights (see the Judges "
            "page).",
        )
        judge_model = st.text_input("HarmBench classifier folder (only with the harmbench judge)", value="")
        cluster = cluster_inputs()
        if sel.exit.dynamic:
            thresholds = ", ".join(f"{t:g}" for t in sel.exit.thresholds)
            st.caption(
                f"Early exit (sidebar Settings): {sel.exit.policy} exit at thresholds {thresholds}, no exit "
                f"before layer {sel.exit.min_layers}, {sel.exit.head} head. Every answer may use all layers, "
                "so the depths are not used; each threshold is one point on the Report's compute chart."
            )
        if sel.exit.drafts:
            st.caption(
                f"Self-speculative decoding (sidebar Settings): the first {sel.exit.draft_layers} layers "
                f"draft {sel.exit.draft_tokens} tokens at a time and the full model verifies them, so every "
                "answer is the full model's and the depths are not used; the run is one point on the "
                "Report's ways-to-remove-depth chart (its compute and the drafts accepted)."
            )
        if n_layers:
            name = _display.md_escape(_display.short_name(sel.model))
            st.caption(
                f"On {name} ({n_layers} layers) the default depths "
                f"keep {', '.join(str(k) for k in parse_depths(DEFAULT_DEPTH_TEXT, n_layers))} layers.",
                help=_display.model_help(sel.model),
            )
        submitted = st.form_submit_button("Start sweep", type="primary", disabled=_jobs.job_running())
    if not submitted:
        return
    try:
        depths = parse_percentages(depth_text)
    except DepthError as exc:
        _display.show_error(DepthError(f"Depths: {exc}"))
        return
    if not chosen:
        st.error("Pick at least one model.")
        return
    if HARMBENCH in judges and not judge_model.strip():
        st.error("The harmbench judge needs the classifier folder; or judge later on the Judges page.")
        return
    classifier, problem = _paths.checked_source(judge_model, "classifier folder")
    if problem:
        st.error(_display.md_escape(problem))
        return
    params = sweep_params(sel)
    if problem := draft_problem(params, chosen):
        st.error(_display.md_escape(problem))
        return
    spec = SweepSpec(
        models=tuple(chosen),
        prompt_set=sel.prompt_set,
        depths=depths,
        judges=tuple(judges or [KEYWORD]),
        judge_model=classifier or None,  # the checked absolute path, not the typed text
        params=params,
        limit=int(limit) or None,
        thresholds=sel.exit.thresholds,
    )
    start_sweep(sel, spec, cluster)


def sweep_params(sel: Selection) -> GenerationParams:
    """The run's settings: the sidebar's exit rule (the first threshold of a dynamic one; the draft of
    self-speculative decoding), or static truncation."""
    if sel.exit.dynamic:
        return sel.exit_params(None, sel.exit.thresholds[0])
    if sel.exit.drafts:
        return sel.speculative_params()
    return sel.params


def draft_problem(params: GenerationParams, models: list[str]) -> str | None:
    """A self-speculative draft as deep as one of the chosen models, said before the sweep starts."""
    if not params.speculative:
        return None
    for model in models:
        n_layers = _models.peek_n_layers(model)
        if n_layers is None:
            continue
        try:
            check_draft_layers(params, n_layers)
        except ValueError as exc:
            return f"Self-speculative decoding on {_display.short_name(model)}: {exc}."
    return None


def cluster_inputs() -> Cluster | None:
    """Workers and GPUs per worker when the app was started with a Ray cluster address; else None."""
    address = cluster_address()
    if address is None:
        return None
    st.caption(
        f"Runs on the Ray cluster at {_display.md_escape(address)} ({RAY_ADDRESS_ENV}): each worker loads "
        "the model once from a folder every node can read; this app alone writes the database."
    )
    left, right = st.columns(2)
    workers = left.number_input("Ray workers", min_value=1, value=2, step=1, key="ray-workers")
    gpus = right.number_input(
        "GPUs per worker", min_value=0.0, value=0.0, step=0.5, key="ray-gpus", help="0: the workers use CPUs"
    )
    return Cluster(address, int(workers), float(gpus))


# ---------------------------------------------------------------- results


def result_table(frame: pd.DataFrame, flips: list[Flip]) -> pd.DataFrame:
    significant = [
        f for f in flips if f.significant
    ]  # only these are marked: an observed reversal may be chance
    flip_at = {(f.model_a, f.layers) for f in significant} | {(f.model_b, f.layers_b) for f in significant}
    names = _charts.model_labels(frame["model"])
    return pd.DataFrame(
        {
            "model": [names[m] for m in frame["model"]],
            "judge": frame["judge"],
            "depth": [
                depth_label(int(k), int(n)) for k, n in zip(frame["layers"], frame["n_layers"], strict=True)
            ],
            "n": frame["n"],
            "coverage": frame["coverage"],
            "ASR %": (frame["asr"] * 100).round(1),
            "95 % interval": [
                f"{lo * 100:.0f}–{hi * 100:.0f} %" if n else "no harmful prompt"
                for lo, hi, n in zip(frame["ci_low"], frame["ci_high"], frame["n"], strict=True)
            ],
            "judged": frame["n_judged"],
            "incoherent %": (100 * frame["incoherent_share"]).round(0),
            "median full-depth NLL": [
                "n/a" if nll is None or nll != nll else f"{nll:.2f} (of {scored})"
                for nll, scored in zip(frame["median_full_depth_nll"], frame["n_full_depth_nll"], strict=True)
            ],
            "undecided": frame["undecided"],
            "copyright left out": frame["copyright_excluded"],
            "harmless refused %": (pd.to_numeric(frame["benign_refusal_rate"], errors="coerce") * 100).round(
                1
            ),
            "benign n": frame["benign_n"],
            "prompt set": frame["prompt_set"],
            "ranking flip": [
                "⚠ flip" if (m, int(k)) in flip_at else ""
                for m, k in zip(frame["model"], frame["layers"], strict=True)
            ],
        }
    )


def show_flips(flips: list[Flip], judge: str) -> None:
    """Significant flips (Holm-corrected reversal test) as warnings; the rest counted, not marked."""
    for f in (f for f in flips if f.significant):
        names = _charts.model_labels((f.model_a, f.model_b))
        a, b = (_display.md_escape(names[m]) for m in (f.model_a, f.model_b))
        st.warning(
            f"Ranking flip at {f.depth:g} % depth ({_display.md_escape(judge)} judge; {a} at {f.layers} "
            f"layers, {b} at {f.layers_b}): {a} answers more harmful requests than "
            f"{b} at full depth ({f.full_asr_a:.0%} vs {f.full_asr_b:.0%}) but fewer here "
            f"({f.asr_a:.0%} vs {f.asr_b:.0%}). p = {f.p_value:.3g}, Holm-corrected p = "
            f"{f.p_value_corrected:.3g} ({_display.md_escape(f.test)}).",
            icon=":material/swap_vert:",
        )
    chance = [f for f in flips if not f.significant]
    if chance:
        st.caption(
            f"{len(chance)} other observed reversal(s) of the full-depth order are not significant after "
            f"Holm correction over the {_display.md_escape(judge)} judge's comparisons (corrected p >= "
            f"{FLIP_ALPHA:g}), so they are not marked (two models with equal true ASR, 100 prompts, 7 "
            "depths show some reversal in about 92 % of simulated runs). Smallest corrected p: "
            f"{min(f.p_value_corrected for f in chance):.3g}."
        )


def _judge_rank(judge: str) -> tuple[int, str]:
    """HarmBench first (the judge to trust), then the others in the usual order, unknown ones last."""
    order = (HARMBENCH, KEYWORD, HUMAN)
    return (order.index(judge) if judge in order else len(order), judge)


def results(sel: Selection) -> None:
    st.header("Results")
    prompt_sets = _scope.scope_picker(sel, "sweep-scope")
    include_copyright = _scope.copyright_toggle("sweep-copyright")
    rows = _queries.asr_rows(sel.db, None, prompt_sets, include_copyright, sel.scope.key)
    if not rows and _scope.offer_other_scopes(sel, prompt_sets, "judged completions of these prompts"):
        return
    if not rows and prompt_sets:
        st.info(
            f"No judged completions of the prompt set {_display.md_escape(set_title(prompt_sets[0]))} yet: "
            "start a sweep above, or choose “all sets”."
        )
        return
    if not rows:
        st.info(
            "No judged completions in this database yet. Start a sweep above: the demo set (12 harmful + "
            "12 benign prompts) at the seven default depths takes a few minutes with the default model on a "
            "CPU. From a terminal: `python -m engine sweep --prompts demo`."
        )
        return
    _scope.settings_caption(sel)
    judges = sorted({r.judge for r in rows}, key=_judge_rank)
    preferred = next((j for j in (HARMBENCH, KEYWORD) if j in judges), judges[0])
    judge = st.segmented_control(
        "Judge",
        judges,
        default=preferred,
        format_func=_display.md_escape,  # option labels are markdown; judge names come from the database
        key="sweep-judge",
        help="Whose verdicts the curves count.",
    )
    judge = judge or preferred
    rows = [r for r in rows if r.judge == judge]
    # the depth curves: static truncation read through the model's own head (early exit: the compute chart)
    static = [r for r in rows if r.is_truncation] or rows
    frame = report.asr_frame(static)
    flips = report.flips(static)
    st.plotly_chart(_charts.asr_figure(frame, flips), key="asr-chart")
    st.caption(
        "ASR: share of harmful prompts the judge says were answered (undecided verdicts and, unless "
        "counted above, copyright behaviours left out). Dashed: harmless requests refused, the share of "
        "benign prompts refused (keyword judge's phrase rule, or human labels), n in the table. Shaded "
        "bands: 95 % Wilson intervals. Stars mark ranking flips between models: order reversed at the same "
        "depth percentage, significant by a reversal test after Holm correction."
    )
    show_flips(flips, judge)
    st.subheader("Refusal gone, or language gone?")
    st.caption(
        "Share of answers flagged incoherent (empty, looping, or not words). A high ASR with a high "
        "incoherent share means the refusal vanished because the model stopped making sense."
    )
    st.plotly_chart(_charts.degenerate_figure(frame), key="degenerate-chart")
    if frame["n_full_depth_nll"].sum() > 0:
        st.caption(
            "Full-depth NLL: how surprised the untruncated model is by each answer (mean negative "
            "log-likelihood per token, nats; lower = more fluent). The line is the median over the answers "
            "scored at that depth (harmful prompts)."
        )
        st.plotly_chart(_charts.nll_figure(frame), key="nll-chart")
    if any(is_dynamic(r.exit_policy) for r in rows):
        st.subheader("Early exit: answered and refused against compute used")
        exits = [r for r in rows if r.family in report.EXIT_CHART_FAMILIES]
        st.plotly_chart(_charts.compute_figure(report.asr_frame(exits)), key="sweep-compute-chart")
        st.caption(
            "Compute used: mean exit layer ÷ layers (static truncation at k: k ÷ L), one point per depth or "
            "threshold, n harmful and n benign prompts in the hover. The Report page says in words which "
            "exit rule keeps the most refusals at 20 % compute saved."
        )
    _methods.show_methods(rows, prompt_sets[0] if prompt_sets else sel.prompt_set, key="sweep-methods-chart")
    _methods.show_categories(sel.db, judge, prompt_sets, key="sweep-category-map")
    st.subheader("Numbers")
    _display.fitting_table(result_table(frame, flips), keep=3, key="numbers")
    st.caption(
        "coverage: the set's prompts answered at that depth (points that miss some are left out of the "
        "Report's headlines). judged: harmful prompts' answers with a verdict from this judge (undecided "
        "included). incoherent %: "
        "share of the judged answers flagged incoherent. median full-depth NLL: nats/token, median over "
        "the judged answers that have one (their count in brackets)."
    )


def main() -> None:
    page = start_page(
        "Depth sweep",
        "Run every prompt of a set at several depths, judge the answers, and see how the attack success rate "
        "(ASR, the share of harmful requests answered) changes as layers are cut. Sweeps run in the "
        "background: switch pages freely; a stopped sweep resumes where it stopped.",
    )
    if page is None:
        return
    sweep_form(page.sel, page.store)
    if _jobs.job_running():
        _jobs.job_panel("sweep-page")
    results(page.sel)


main()
