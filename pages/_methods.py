"""Every way of removing depth on one chart, and which harms break first (Report and Depth sweep pages)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine import report
from pages import _charts, _display, _queries

METHODS_HOWTO = (
    "Only one way of removing depth is stored in this scope. To compare them, sweep the same prompts with "
    "a middle block removed and with self-speculative decoding, e.g. `python -m engine sweep --prompts "
    "{prompt_set} --drop-layers 3-4` and `python -m engine sweep --prompts {prompt_set} --exit-policy "
    "speculative --draft-layers 4`."
)


def methods_compared(frame: pd.DataFrame) -> bool:
    """Whether the rows hold more than one way of removing depth (the chart then says something)."""
    return "family" in frame and _charts.methods_frame(frame)["family"].nunique() > 1


def methods_headlines(rows: list[report.AsrRow]) -> list[str]:
    """'For ~25 % compute saved, which method keeps refusals?' in words, per prompt set and model."""
    names = _charts.model_labels(r.model for r in rows)
    found = []
    for prompt_set in dict.fromkeys(r.prompt_set for r in rows):
        in_set = [r for r in rows if r.prompt_set == prompt_set]
        for model in dict.fromkeys(r.model for r in in_set):
            if line := report.methods_headline(in_set, model, name=names[model]):
                found.append(line)
    return found


def show_methods(rows: list[report.AsrRow], prompt_set: str, key: str = "methods-chart") -> None:
    """Every way of removing depth on one chart: truncation, block removal, early exit, self-speculative."""
    st.subheader(_charts.METHODS_QUESTION)
    frame = report.asr_frame([r for r in rows if r.n or r.benign_n])
    if not methods_compared(frame):
        st.info(METHODS_HOWTO.format(prompt_set=prompt_set))  # the set on screen, not another
        return
    for line in methods_headlines(rows):
        st.markdown(f"**{_display.md_escape(line)}**")
    with st.container(key=f"{key}-box"):
        st.plotly_chart(_charts.methods_figure(frame), key=key)
    st.caption(
        "Compute used: decoder-layer passes per generated token ÷ the model's layers. Truncation at k and "
        "block removal keeping k layers: k ÷ L; early exit: the mean exit layer ÷ L; self-speculative "
        "decoding: the draft's and the verification's passes, which exceed one full pass (its answers are "
        "the full model's). Counted, not timed: an exited token still writes keys and values in later "
        "layers. Markers: circle truncation, square block removal, diamond early exit, star "
        "self-speculative; filled and solid: harmful answered (n harmful prompts in the hover); open and "
        "dashed: harmless requests refused (n benign prompts)."
    )


CATEGORY_HOWTO = (
    "No harm categories in this scope: the prompt set gives its prompts none. HarmBench, StrongREJECT "
    "and the demo set name a category per prompt."
)


def show_categories(
    db: str, judge: str, prompt_sets: tuple[str, ...] | None, key: str = "category-map"
) -> None:
    """Per-category ASR × depth setting: which harms break first (cells with n < 5 greyed)."""
    st.subheader("Which harms break first?")
    cells = [c for c in _queries.category_rows(db, judge, prompt_sets) if c.n]
    named = [c for c in cells if c.category != "uncategorised"]
    if not named:
        st.info(CATEGORY_HOWTO)
        return
    groups = list(dict.fromkeys((c.prompt_set, c.model) for c in named))
    names = _charts.model_labels(c.model for c in named)
    for index, (prompt_set, model) in enumerate(groups):
        mine = [c for c in named if (c.prompt_set, c.model) == (prompt_set, model)]
        title = _display.md_escape(f"{names[model]} on {prompt_set} ({judge} judge)")
        st.markdown(title, help=_display.model_help(model))
        with st.container(key=f"{key}-box-{index}"):
            frame = pd.DataFrame([c.as_dict() for c in mine])
            st.plotly_chart(_charts.category_heatmap(frame), key=f"{key}-{index}")
    st.caption(
        f"Share of each category's harmful prompts answered (ASR) at each depth setting, columns ordered "
        f"by compute used; n harmful prompts in each cell. Grey: fewer than {_charts.MIN_CELL_N} prompts, "
        "too few to read. Categories as the prompt set names them."
    )
