"""Display helpers every page shares: page headers, engine errors as messages, and plain-text rendering.

Every stored or typed string (model output, prompts, CSV cells, paths, judge names, notes, labels, model
names, prompt ids, categories, set names, error messages) reaches the page either through
``st.text``/``st.code``/``st.dataframe``/``st.selectbox``/``st.multiselect`` (plain text) or through
:func:`md_escape` wherever Streamlit reads markdown: ``st.markdown``/``caption``/``info``/``error``/
``warning``/``success``/``toast``/``spinner``/``progress`` text, and the labels, options and help of
widgets (buttons, radio and segmented-control options, metric labels and help, expanders, tabs). Charts
use ``pages._charts.plot_text``. Never as markdown, HTML, LaTeX or icon shortcodes of its own.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Sequence

import pandas as pd
import streamlit as st

from engine.errors import user_message
from pages import _charts

log = logging.getLogger("depthscope.app")

_ASCII_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # CommonMark: each may be backslash-escaped
_ZERO_WIDTH_SPACE = "\u200b"


def md_escape(text: str) -> str:
    """Any stored or typed text, made literal for Streamlit's markdown: every ASCII punctuation character
    backslash-escaped (no link, image, HTML tag, heading, list, table, ``$…$`` LaTeX or ``:red[…]``
    directive can form), and a zero-width space after each colon, because Streamlit expands
    ``:material/…:`` icons and ``:emoji:`` shortcodes in the text that remains after escapes are read."""
    escaped = _ASCII_PUNCTUATION.sub(r"\\\1", str(text))
    return escaped.replace("\\:", "\\:" + _ZERO_WIDTH_SPACE)


def page_header(title: str, explanation: str) -> None:
    st.title(title)
    st.caption(explanation)


def error_sentence(exc: BaseException) -> str:
    """One sentence for the page: a user-facing engine error's own message; anything else is a bug,
    logged with its traceback and named as one."""
    message = user_message(exc)
    if message is not None:
        log.info("engine error shown to the user", exc_info=exc)
        return message
    log.error("unexpected error (a bug)", exc_info=exc)
    return (
        f"Something went wrong inside DepthScope ({type(exc).__name__}). This is a bug, not your input: "
        "the traceback is in the server log."
    )


def show_error(exc: BaseException) -> None:
    """An engine error as a message, never a traceback (the server log keeps the details). Messages
    may quote CSV cells or paths, so they are escaped: nothing in them is read as markdown."""
    st.error(md_escape(error_sentence(exc)), icon=":material/error:")


def short_name(model: str, width: int = 42) -> str:
    """One model's name for people (``engine.modelfiles.model_name``), cut to ``width``."""
    return _charts.short(model, width)


def model_help(model: str) -> str:
    """A tooltip that identifies a model exactly: the id it was given (path, hub id or embedded name)."""
    return md_escape(f"Model: {model}")


def show_plain_text(text: str, big: bool = False) -> None:
    """Model output as plain text; long or many-line answers scroll inside a fixed-height box."""
    long = len(text) > (900 if big else 320) or text.count("\n") > (14 if big else 8)
    box = st.container(height=(340 if big else 240), border=False) if long else st.container()
    box.text(text)


# ---------------------------------------------------------------- tokens coloured by exit layer

# Early exits warm (less of the network used), full depth cool; text stays dark on every shade. The
# light hue ramp runs red → orange → yellow → green → blue → violet, so neighbouring layers of a
# model with up to about a dozen layers get clearly different colours (a two-colour blend made
# layers 1 and 2 of 8 look alike).
_EXIT_STOPS = (
    (252, 165, 165),  # red
    (253, 186, 116),  # orange
    (253, 224, 71),  # yellow
    (190, 242, 100),  # lime
    (134, 239, 172),  # green
    (94, 234, 212),  # teal
    (125, 211, 252),  # sky
    (165, 180, 252),  # indigo
    (216, 180, 254),  # violet
)
_NO_EXIT_STYLE = "border-bottom:1px dashed #9aa0a6"  # a token whose stored exit layer is missing or invalid


def exit_colour(layer: int, n_layers: int) -> str:
    """Background for a token that exited after ``layer`` of ``n_layers`` layers."""
    share = 0.0 if n_layers <= 1 else min(max((layer - 1) / (n_layers - 1), 0.0), 1.0)
    position = share * (len(_EXIT_STOPS) - 1)
    low = min(int(position), len(_EXIT_STOPS) - 2)
    mix = position - low
    red, green, blue = (
        round(a + (b - a) * mix) for a, b in zip(_EXIT_STOPS[low], _EXIT_STOPS[low + 1], strict=True)
    )
    return f"rgb({red},{green},{blue})"


def _span(text: str, style: str, title: str) -> str:
    title, text = html.escape(title, quote=True), html.escape(text, quote=True)
    return f'<span style="{style}" title="{title}">{text}</span>'


def exit_strip_html(pieces: Sequence[str], exit_layers: Sequence[int | None], n_layers: int) -> str:
    """Model text as HTML spans, one per token, coloured by its exit layer (uncoloured where the stored
    row gives none that is valid: None). Every piece is HTML-escaped (tags, quotes, ampersands) and sits
    in a plain span: it is rendered by ``st.html``, which reads no markdown or LaTeX, so ``<img>``,
    ``![x](y)`` and ``$x$`` in a token stay visible characters."""
    spans = [
        _span(
            piece,
            f"background:{exit_colour(int(layer), n_layers)};border-radius:3px;padding:1px 0",
            f"token {index + 1}: exited after {int(layer)} of {n_layers} layers",
        )
        if layer is not None
        else _span(
            piece, "border-bottom:1px dashed #9aa0a6", f"token {index + 1}: no valid exit layer stored"
        )
        for index, (piece, layer) in enumerate(zip(pieces, exit_layers, strict=True))
    ]
    legend = " ".join(
        _span(
            f" {k} ",
            f"background:{exit_colour(k, n_layers)};border-radius:3px;padding:1px 4px",
            f"{k} layers",
        )
        for k in _legend_layers(n_layers)
    )
    return (
        '<div class="depthscope-exit-strip" style="white-space:pre-wrap;line-height:1.9;'
        f'font-family:ui-monospace,monospace;font-size:0.92rem">{"".join(spans)}</div>'
        '<div class="depthscope-exit-legend" style="font-size:0.8rem;color:#5f6368;margin-top:4px">'
        f"exited after k of {n_layers} layers: {legend}</div>"
    )


def _legend_layers(n_layers: int) -> list[int]:
    """Every layer up to ten layers; else ten swatches from 1 to L."""
    if n_layers <= 10:
        return list(range(1, n_layers + 1))
    return sorted({round(1 + i * (n_layers - 1) / 9) for i in range(10)})


# ---------------------------------------------------------------- tables that fit the page

TABLE_WIDTH_PX = 900  # the main column is about 940 pixels wide in a 1440-pixel window, sidebar open
# Streamlit's grid, measured in Chromium: about 6.3 px a character plus 24 px a column (rounded up
# here), and no column wider than about 40 characters.
_CHAR_PX, _CELL_PADDING_PX, _LONGEST_CELL = 6.6, 24, 40


def column_px(frame: pd.DataFrame, column: str) -> int:
    """About how wide Streamlit's grid draws ``column``: its header or longest cell, whichever is wider."""
    cells = frame[column].astype(str).str.len() if len(frame) else pd.Series([0])
    longest = max(len(str(column)), int(cells.max()))
    return round(_CELL_PADDING_PX + _CHAR_PX * min(longest, _LONGEST_CELL))


def split_columns(frame: pd.DataFrame, keep: int = 1, width_px: int = TABLE_WIDTH_PX) -> tuple[list, list]:
    """(the columns shown, the rest): columns in order while they fit ``width_px``; the first ``keep``
    always, since they say what a row is."""
    shown, used = [], 0
    for index, column in enumerate(frame.columns):
        width = column_px(frame, column)
        if index >= keep and used + width > width_px:
            break
        shown.append(column)
        used += width
    return shown, [c for c in frame.columns if c not in shown]


def fitting_table(frame: pd.DataFrame, *, keep: int = 1, key: str, **kwargs) -> None:
    """A table that is never cut at the page's right edge: the columns that fit, then the others in an
    expander, each row named again by its first ``keep`` columns."""
    shown, rest = split_columns(frame, keep)
    st.dataframe(frame[shown], hide_index=True, key=f"{key}-main", **kwargs)
    if rest:
        names = ", ".join(str(c) for c in rest)
        with st.expander(md_escape(f"More columns: {names}")):
            st.dataframe(frame[[*frame.columns[:keep], *rest]], hide_index=True, key=f"{key}-more", **kwargs)
