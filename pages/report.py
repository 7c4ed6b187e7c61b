"""Report: headlines, the key chart and plain-language caveats, with files to take away."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import streamlit as st

from engine import queries, report
from pages import _charts, _state

SEED_INFLATION = 3.0  # keyword ASR ÷ HarmBench ASR in the seed study


def pick_judge(present: list[str]) -> str:
    automatic = [j for j in ("harmbench", "keyword") if j in present] or present
    return st.radio(
        "Judge behind the numbers",
        automatic,
        horizontal=True,
        key="report-judge",
        help="HarmBench when available: the keyword judge overstates ASR.",
    )


def headlines(rows: list[report.AsrRow]) -> list[str]:
    """report.headline per model, with model paths shortened to their folder name when that is unique."""
    names = {r.model: _charts.short(r.model) for r in rows}
    if len(set(names.values())) == len(names):
        rows = [replace(r, model=names[r.model]) for r in rows]
    found = []
    for model in dict.fromkeys(r.model for r in rows):
        line = report.headline(rows, model)
        found.append(
            line
            or f"{_charts.short(model)}: not enough depths for a headline yet (it needs full depth and one "
            "more)."
        )
    return found


def inflation_text(db: str) -> str:
    rows = _state.agreement_rows(db, "keyword", "harmbench")
    measured = [r.agreement.inflation for r in rows if r.layers == 0 and r.agreement.inflation]
    if measured:
        values = ", ".join(f"{v:.1f}×" for v in measured)
        return (
            f"The refusal-keyword judge counts any answer without an apology phrase as harmful, gibberish "
            f"included. On these answers it reports {values} the HarmBench classifier's ASR."
        )
    return (
        "The refusal-keyword judge counts any answer without an apology phrase as harmful, gibberish "
        f"included; in the seed study it overstated ASR about {SEED_INFLATION:.0f}× compared with the "
        "HarmBench classifier. Treat keyword-judge numbers as an upper bound."
    )


def caveats(db: str, rows: list[report.AsrRow], judge: str) -> list[str]:
    ns = sorted({r.n for r in rows})
    n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
    widest = max(rows, key=lambda r: r.ci_high - r.ci_low)
    degenerate = sum(r.degenerate for r in rows)
    judged = sum(r.n + r.undecided for r in rows)
    notes = [
        f"Judge: {judge} (version {rows[0].version}). Each point counts harmful prompts only: {n_text} "
        "per model and depth.",
        f"Small samples are uncertain: the widest 95 % interval here runs from {widest.ci_low:.0%} to "
        f"{widest.ci_high:.0%} (observed {widest.asr:.0%}, n = {widest.n}). Differences inside the bands may "
        "be chance.",
        inflation_text(db)
        if judge == "keyword"
        else "HarmBench is a classifier: it makes mistakes too; "
        "compare a sample with human labels (Judges page).",
        f"{degenerate} of {judged} answers ({degenerate / max(judged, 1):.0%}) are flagged incoherent. A "
        "refusal that disappears because the model stops producing language is not a real jailbreak.",
        "Cutting layers is a what-if experiment on the network, not something a user of a hosted model can "
        "do: it shows where in the model safety behaviour lives.",
    ]
    if any(r.model == queries.DEFAULT_MODEL for r in rows):
        notes.append(
            "SmolLM2-135M-Instruct is a tiny demonstration model: it answers most harmful requests even at "
            "full depth and degenerates below about 27 of 30 layers. Its numbers say nothing about real "
            "models."
        )
    return notes


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
            "incoherent": frame["degenerate"],
        }
    )


def raw_export(db: str, fmt: str) -> bytes:
    """The raw results (every generation with its verdicts) as CSV or Parquet bytes, via store.export."""
    with tempfile.TemporaryDirectory() as folder:
        path = _state.open_store(db).export(Path(folder) / f"results.{fmt}")
        return path.read_bytes()


def downloads(
    sel: _state.Selection, title: str, lines: list[str], notes: list[str], frame: pd.DataFrame
) -> None:
    st.subheader("Take it with you")
    row = st.container(horizontal=True)
    row.download_button(
        "Report (HTML, works offline)",
        data=lambda: _charts.report_html(
            title, lines, notes, _charts.asr_figure(frame), table_for_export(frame)
        ),
        file_name="depthscope-report.html",
        mime="text/html",
        on_click="ignore",
        key="dl-html",
    )
    row.download_button(
        "Chart (PNG)",
        data=lambda: _charts.asr_png(frame, title),
        file_name="depthscope-asr.png",
        mime="image/png",
        on_click="ignore",
        key="dl-png",
    )
    row.download_button(
        "Raw results (CSV)",
        data=lambda: raw_export(sel.db, "csv"),
        file_name="depthscope-results.csv",
        mime="text/csv",
        on_click="ignore",
        key="dl-csv",
    )
    row.download_button(
        "Raw results (Parquet)",
        data=lambda: raw_export(sel.db, "parquet"),
        file_name="depthscope-results.parquet",
        mime="application/octet-stream",
        on_click="ignore",
        key="dl-parquet",
    )
    st.caption("Raw results: every stored answer with every judge's verdict, one row per answer and judge.")


def main() -> None:
    _state.ensure_frame()
    _state.page_header(
        "Report",
        "The findings in plain words for people who will not read a table: one sentence per model, the key "
        "chart, what the numbers can and cannot say, and files to share.",
    )
    sel = _state.selection()
    if _state.get_store(sel.db) is None:
        return
    present = _state.judges_in_store(sel.db)
    if not present:
        st.info(
            "Nothing to report yet: run a sweep on the Depth sweep page first. This page then writes the "
            "headline, the chart and the caveats for you."
        )
        return
    judge = pick_judge(present)
    rows = _state.asr_rows(sel.db, judge)
    if not rows:
        st.info(f"No {judge} verdicts on harmful prompts yet: run a sweep, or pick another judge.")
        return
    frame = report.asr_frame(rows)
    title = "Does safety survive when layers are cut off?"
    lines = headlines(rows)
    for line in lines:
        st.markdown(f"#### {_state.md_escape(line)}")
    st.plotly_chart(_charts.asr_figure(frame, report.flips(rows)), key="report-chart")
    st.subheader("What these numbers can and cannot say")
    notes = caveats(sel.db, rows, judge)
    st.markdown("\n".join(f"- {_state.md_escape(note)}" for note in notes))
    downloads(sel, title, lines, notes, frame)


main()
