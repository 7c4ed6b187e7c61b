"""Probes: where the model reads "this request is harmful", where refusal appears, and the lag between."""

from __future__ import annotations

import shlex

import pandas as pd
import streamlit as st

from engine import queries
from engine.datasets import DatasetError, prompt_set_id
from engine.depths import default_layers
from engine.judges.names import KEYWORD
from engine.lag import (
    EMERGENCE_ALPHA,
    EMERGENCE_MARGIN,
    HARM_DETECTION_RULE,
    LagSummary,
    no_detection_reason,
)
from engine.lenses.files import DamagedLensError, read_lens_report
from engine.types import ModelInfo, Prompt
from pages import _charts, _display, _jobs, _models, _paths, _queries, _store
from pages._selection import Selection
from pages._sidebar import set_title
from pages._skeleton import start_page


def start_probe(sel: Selection, prompts: list[Prompt]) -> None:
    hub = _models.model_hub()
    cache_dir = _paths.activations_dir()

    def work(job: _jobs.Job) -> str:
        from engine.usecases import run_probe  # torch and scikit-learn: only inside the job

        job.update(0.05, "loading the model")
        loaded = hub.load(sel.model)
        job.update(0.2, f"reading {len(prompts)} prompts' activations, fitting a probe per layer, saving")
        with _store.open_job_store(sel.db) as store:
            analysis = run_probe(store, loaded, prompts, sel.prompt_set, sel.params, cache_dir=cache_dir)
        lag = analysis.lag
        return (
            f"Harm detected at layer {lag.harm_detection_layer}, refusal emerges at layer "
            f"{lag.refusal_emergence_layer}."
        )

    _jobs.start_job("probe", f"Probes: {_display.short_name(sel.model)} × {set_title(sel.prompt_set)}", work)


def lag_metrics(lag: LagSummary) -> None:
    cols = st.columns(3)
    cols[0].metric(
        "Harm detected at layer",
        "not reached" if lag.harm_detection_layer is None else lag.harm_detection_layer,
        help=f"Harm detection: {HARM_DETECTION_RULE}. Accuracy alone is no evidence: the prompts' words "
        "can separate harmful from benign by themselves.",
    )
    cols[1].metric(
        "Refusal emerges at layer",
        "not seen" if lag.refusal_emergence_layer is None else lag.refusal_emergence_layer,
        help="First layer where the logit lens puts clearly more probability on refusal openings for harmful "
        f"prompts than for benign ones (≥ {EMERGENCE_MARGIN:.2f} and p < {EMERGENCE_ALPHA:g}).",
    )
    lag_text = "n/a" if lag.lag_layers is None else f"{lag.lag_layers} layers ({lag.lag_percent:.0f} %)"
    cols[2].metric("Alignment lag", lag_text, help="Refusal emergence minus harm detection.")


def show_refusal(
    sel: Selection, table: pd.DataFrame, info: ModelInfo, lag: LagSummary, truncations: list[int]
) -> None:
    st.subheader("When does refusal appear? (logit lens)")
    if "refusal_mass_harmful" not in table:
        st.info("These probe results carry no refusal curve: run the probes again.")
        return
    swept = {
        row.layers: row.refusal_rate
        for row in _queries.asr_rows(sel.db, KEYWORD)
        if row.model_hash == info.model_hash and row.n
    }
    st.plotly_chart(_charts.refusal_figure(table, lag, truncations, swept), key="refusal-chart")


def probe_caption(table: pd.DataFrame, baselines: dict[str, float]) -> None:
    """What the probe curve is compared with, the rule, and (demo model) the training overlap."""
    counts = table["n_prompts"].dropna() if "n_prompts" in table else pd.Series(dtype=float)
    n = int(counts.iloc[0]) if not counts.empty else None
    prompts = f"{n} prompts" if n else "the probe prompts"
    if not baselines:
        st.info(
            "These probe results were stored before the content baselines existed, so no harm-detection "
            "layer can be read from them: run the probes again."
        )
    else:
        shown = ", ".join(
            f"{_charts.BASELINE_NAMES.get(name, name)} {accuracy:.0%}"
            for name, accuracy in sorted(baselines.items())
        )
        st.caption(
            f"Accuracy over {prompts}, 5-fold cross-validated (mean over folds). Dotted lines: content-only "
            f"baselines on the same folds, reading the prompt's words without any layer "
            f"({_display.md_escape(shown)}). A layer "
            f"counts as detecting harm only if it beats the best baseline: {HARM_DETECTION_RULE}."
        )
    overlap = table["training_overlap"].dropna() if "training_overlap" in table else pd.Series(dtype=float)
    if not overlap.empty:
        st.caption(
            f"Training overlap: {int(overlap.iloc[0])} of {prompts} are in the demo model's training corpus "
            "(its probes may have memorised them)."
        )


def show_cosines(table: pd.DataFrame) -> None:
    st.subheader("Do the layers agree on the direction? (cosine between probe directions)")
    matrix = queries.probe_cosines(table, _paths.activations_dir())
    if matrix is None:
        st.info(
            "The direction file for these results is not on this machine: run the probes again to see it."
        )
    else:
        st.plotly_chart(_charts.cosine_figure(matrix), key="cosine-chart")


def show_results(sel: Selection, table: pd.DataFrame, info: ModelInfo, baselines: dict[str, float]) -> None:
    n_layers = info.n_layers
    lag = queries.lag_view(table, n_layers)
    truncations = _queries.stored_layers(sel.db, info.model_hash) or default_layers(n_layers)
    lag_metrics(lag)
    if (reason := no_detection_reason(baselines, lag.harm_detection_layer)) is not None:
        st.info(reason)
    st.caption(
        "Dotted grey lines: the truncation depths swept for this model (the default depths when none). A "
        "truncation below the refusal-emergence layer removes refusal while the model still knows the "
        "request is harmful."
    )
    st.subheader("Can a linear probe tell harmful from benign prompts, layer by layer?")
    st.plotly_chart(_charts.probe_figure(table, lag, truncations, baselines), key="probe-chart")
    probe_caption(table, baselines)
    show_refusal(sel, table, info, lag, truncations)
    show_cosines(table)
    with st.expander("Per-layer numbers"):
        st.dataframe(table.drop(columns=["direction_ref"], errors="ignore"), hide_index=True)


def lens_train_command(model: str) -> str:
    return f"python -m engine lens train --model {shlex.quote(model)}"


def lens_summary(report: dict) -> str:
    """The two KL curves in words, with what they were measured on."""
    raw, tuned = report.get("kl_raw") or [], report.get("kl_tuned") or []
    below = sum(t < r for r, t in zip(raw[:-1], tuned[:-1], strict=False))
    compared = min(len(raw), len(tuned)) - 1
    tokens, texts = report.get("heldout_tokens", "?"), report.get("n_texts_heldout", "?")
    corpus, steps = report.get("corpus", "?"), report.get("steps", "?")
    return (
        f"Held-out KL (nats, mean per token) between each layer's reading and the final layer's next-token "
        f"distribution, over {tokens} tokens of {texts} held-out prompts ({corpus} corpus; lens trained "
        f"{steps} steps). "
        f"The tuned lens is below the raw head at {below} of {max(compared, 0)} layers before the last. "
        "Lower means a layer's state already says what the full model will say: an exit head that reads "
        "it well can leave early without changing the answer."
    )


def show_lenses(sel: Selection, info: ModelInfo | None) -> None:
    """The logit lens is one of two lenses: raw (final norm + head) and tuned (a trained map first)."""
    st.subheader("Two lenses: how well does each layer's state predict the final answer?")
    try:
        report = read_lens_report(info.model_hash, model_name=sel.model) if info is not None else None
    except DamagedLensError as exc:
        _display.show_error(exc)
        st.code(lens_train_command(sel.model), language="bash")
        return
    if not report or not report.get("kl_raw") or not report.get("kl_tuned"):
        st.info(
            "No tuned lens for this model yet. The raw head (the logit lens above) reads each layer with "
            "the final norm and the output head as they are; a tuned lens first applies a small affine map "
            "per layer, trained on benign text to match the final layer. Train one (a few minutes on CPU "
            "for small models) with the command below; this page then compares the two."
        )
        st.code(lens_train_command(sel.model), language="bash")
        return
    fig = _charts.lens_kl_figure(report["kl_raw"], report["kl_tuned"])
    st.plotly_chart(fig, key="lens-kl-chart")
    st.caption(_display.md_escape(lens_summary(report)))


def main() -> None:
    page = start_page(
        "Probes",
        "Where inside the model does “this request is harmful” become readable, and where does refusal "
        "start? A linear probe per layer answers the first, the logit lens the second; the gap between "
        "them is the alignment lag, shown on the same axis as the truncation depths.",
    )
    if page is None:
        return
    sel = page.sel
    try:
        prompts = _queries.prompts_of(sel.prompt_set)
    except DatasetError as exc:
        _display.show_error(exc)
        return
    info = _models.model_info(sel.model, page.store)
    set_id = prompt_set_id(prompts)
    table = _queries.probe_table(sel.db, info.model_hash, set_id) if info else None
    label = f"Run probes: {_display.short_name(sel.model)} on {set_title(sel.prompt_set)}"
    if st.button(_display.md_escape(label), type="primary", disabled=_jobs.job_running(), key="run-probes"):
        start_probe(sel, prompts)
    if _jobs.job_running("probe"):
        _jobs.job_panel("probe-page")
    if table is None or table.empty:
        st.info(
            "No probe results for this model and prompt set yet. Press Run probes: it needs harmful and "
            "benign prompts (the demo set has both) and takes about a minute for the default model on a CPU."
        )
    else:
        show_results(sel, table, info, _queries.probe_baselines(sel.db, info.model_hash, set_id))
    show_lenses(sel, info)


main()
