"""The frame around every page (page config and sidebar), and the one opening every page starts with:
:func:`start_page` draws the frame and header and returns what the page needs, or None."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import streamlit as st

from engine.store import Store
from pages._display import page_header
from pages._selection import Selection, selection
from pages._sidebar import sidebar
from pages._store import get_store

_FRAME = threading.local()  # .drawn: app.py drew the frame in this script run


@dataclass(frozen=True)
class PageContext:
    """What a page works with: the sidebar's choices and the open store of the chosen database."""

    sel: Selection
    store: Store


def page_config() -> None:
    st.set_page_config(page_title="DepthScope", page_icon=":material/layers:", layout="wide")


def run_page(page: st.Page) -> None:
    """app.py: draw the shared frame once, then the chosen page."""
    page_config()
    sidebar()
    _FRAME.drawn = True
    try:
        page.run()
    finally:
        _FRAME.drawn = False


def ensure_frame() -> None:
    """When app.py did not run (see below), send the run through it again."""
    if getattr(_FRAME, "drawn", False):
        return
    _leave_multipage_v1()
    page_config()
    sidebar()


def _leave_multipage_v1() -> None:
    """Streamlit 1.67 keeps a legacy mode for apps with a pages/ folder: until some run has called
    st.navigation, a run asks PagesManager whether to execute pages/<url>.py alone, without app.py. A
    server whose first visitor opens /report directly would stay in that mode (old-style page list, no
    shared sidebar) until someone opens /. Ending the mode and rerunning sends this run through app.py."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a future Streamlit without the legacy mode
        return
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()


def start_page(title: str, explanation: str) -> PageContext | None:
    """Every page's opening: frame, header, the sidebar's selection and the store (None after showing
    why the database cannot be opened)."""
    ensure_frame()
    page_header(title, explanation)
    sel = selection()
    store = get_store(sel.db)
    return None if store is None else PageContext(sel, store)
