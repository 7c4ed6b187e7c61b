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

import logging
import re

import streamlit as st

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


def show_error(exc: BaseException) -> None:
    """An engine error as a message, never a traceback (the server log keeps the details). Messages
    may quote CSV cells or paths, so they are escaped: nothing in them is read as markdown."""
    log.info("engine error shown to the user", exc_info=exc)
    st.error(md_escape(str(exc) or type(exc).__name__), icon=":material/error:")


def short_name(model: str, width: int = 42) -> str:
    """A model id for labels: embedded names spelled out, a path by its last folder."""
    return _charts.short(model, width)


def show_plain_text(text: str, big: bool = False) -> None:
    """Model output as plain text; long or many-line answers scroll inside a fixed-height box."""
    long = len(text) > (900 if big else 320) or text.count("\n") > (14 if big else 8)
    box = st.container(height=(340 if big else 240), border=False) if long else st.container()
    box.text(text)
