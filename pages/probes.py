"""Probes: where the model reads "this request is harmful", where refusal appears, and the lag between."""

from __future__ import annotations

import importlib.util

import pandas as pd
import streamlit as st

from engine import queries
from engine.datasets import DatasetError
from engine.depths import default_layers
from engine.types import ModelInfo, Prompt
from pages import _charts, _state

NEEDED = ("analyse", "save_directions", "probe_records")


def probes_available() -> bool:
    """engine/probes.py is written by another developer: check its entry points without importing torch."""
    if importlib.util.find_spec("engine.probes") is None:
        return False
    from engine import probes

    return all(hasattr(probes, name) for name in NEEDED)


def start_probe(sel: _state.Selection, prompts: list[Prompt]) -> None:
    hub = _state.model_hub()
    cache_dir = _state.activations_dir()

    def work(job: _state.Job) -> str:
        from engine import probes

        job.update(0.05, "loading the model")
        loaded = hub.load(sel.model)
        job.update(0.2, f"reading {len(prompts)} prompts' activations and fitting a probe per layer")
        analysis = probes.analyse(loaded, prompts, sel.params, cache_dir=cache_dir)
        job.update(0.9, "saving")
        records = probes.probe_records(analysis, probes.save_directions(analysis, cache_dir))
        with _state.open_job_store(sel.db) as store:
            store.save_model(loaded.info)
            store.save_prompt_set(sel.prompt_set, prompts, source=sel.prompt_set, set_id=records[0].set_id)
            store.save_probe_results(records, replace=True)
        lag = analysis.lag
        return (
            f"Harm detected at layer {lag.harm_detection_layer}, refusal emerges at layer "
            f"{lag.refusal_emergence_layer}."
        )

    _state.start_job(
        "probe", f"Probes: {_state.short_name(sel.model)} × {_state.set_title(sel.prompt_set)}", work
    )


def lag_metrics(lag: queries.LagView) -> None:
    cols = st.columns(3)
    cols[0].metric(
        "Harm detected at layer",
        "not reached" if lag.harm_detection_layer is None else lag.harm_detection_layer,
        help="First layer whose cross-validated probe separates harmful from benign prompts with ≥ 95 % "
        "accuracy.",
    )
    cols[1].metric(
        "Refusal emerges at layer",
        "not seen" if lag.refusal_emergence_layer is None else lag.refusal_emergence_layer,
        help="First layer where the logit lens puts clearly more probability on refusal openings for harmful "
        "prompts than for benign ones (≥ 0.10 and p < 0.05).",
    )
    lag_text = "n/a" if lag.lag_layers is None else f"{lag.lag_layers} layers ({lag.lag_percent:.0f} %)"
    cols[2].metric("Alignment lag", lag_text, help="Refusal emergence minus harm detection.")


def show_results(sel: _state.Selection, table: pd.DataFrame, info: ModelInfo) -> None:
    n_layers = info.n_layers
    lag = queries.lag_view(table, n_layers)
    truncations = _state.stored_layers(sel.db, info.model_hash) or default_layers(n_layers)
    lag_metrics(lag)
    st.caption(
        "Dotted grey lines: the truncation depths swept for this model (the default depths when none). A "
        "truncation below the refusal-emergence layer removes refusal while the model still knows the "
        "request is harmful."
    )
    st.subheader("Can a linear probe tell harmful from benign prompts, layer by layer?")
    st.plotly_chart(_charts.probe_figure(table, lag, truncations), key="probe-chart")
    st.subheader("When does refusal appear? (logit lens)")
    if "refusal_mass_harmful" in table:
        swept = {
            row.layers: row.refusal_rate
            for row in _state.asr_rows(sel.db, "keyword")
            if row.model_hash == info.model_hash and row.n
        }
        st.plotly_chart(_charts.refusal_figure(table, lag, truncations, swept), key="refusal-chart")
    else:
        st.info("These probe results carry no refusal curve: run the probes again.")
    st.subheader("Do the layers agree on the direction? (cosine between probe directions)")
    matrix = queries.probe_cosines(table, _state.activations_dir())
    if matrix is None:
        st.info(
            "The direction file for these results is not on this machine: run the probes again to see it."
        )
    else:
        st.plotly_chart(_charts.cosine_figure(matrix), key="cosine-chart")
    with st.expander("Per-layer numbers"):
        st.dataframe(table.drop(columns=["direction_ref"], errors="ignore"), hide_index=True)


def main() -> None:
    _state.ensure_frame()
    _state.page_header(
        "Probes",
        "Where inside the model does “this request is harmful” become readable, and where does refusal "
        "start? A linear probe per layer answers the first, the logit lens the second; the gap between "
        "them is the alignment lag, shown on the same axis as the truncation depths.",
    )
    sel = _state.selection()
    store = _state.get_store(sel.db)
    if store is None:
        return
    try:
        prompts = _state.prompts_of(sel.prompt_set)
    except DatasetError as exc:
        _state.show_error(exc)
        return
    set_id = queries.probe_set_id(prompts)
    info = _state.model_info(sel, store)
    table = _state.probe_table(sel.db, info.model_hash, set_id) if info else None
    available = probes_available()
    label = f"Run probes: {_state.short_name(sel.model)} on {_state.set_title(sel.prompt_set)}"
    if not available:
        st.info("The probe engine (engine/probes.py) is not available yet.")
    elif st.button(label, type="primary", disabled=_state.job_running(), key="run-probes"):
        start_probe(sel, prompts)
    if _state.job_running("probe"):
        _state.job_panel("probe-page")
    if table is None or table.empty:
        st.info(
            "No probe results for this model and prompt set yet. Press Run probes: it needs harmful and "
            "benign prompts (the demo set has both) and takes about a minute for the default model on a CPU."
        )
        return
    show_results(sel, table, info)


main()
