"""Which results a page shows: the sidebar's prompt set or, said explicitly, every set (never pooled
silently), and whether the keyword judge counts HarmBench copyright behaviours."""

from __future__ import annotations

import streamlit as st

from pages import _queries
from pages._display import md_escape
from pages._selection import Selection
from pages._sidebar import set_title

ALL_SETS = "all sets"


def scope_picker(sel: Selection, key: str) -> tuple[str, ...] | None:
    """The prompt sets to show: (the sidebar's set,) by default (its current version: the file as it was
    last swept), an earlier version of it when its file was edited, None for "all sets" (each its own)."""
    earlier = dict(_queries.earlier_set_versions(sel.db, sel.prompt_set))

    def title(name: str) -> str:
        if name == ALL_SETS:
            return "all sets, each on its own"
        if name in earlier:
            return md_escape(f"{set_title(sel.prompt_set)}, {earlier[name]}")
        return md_escape(set_title(name))

    choice = st.radio(
        "Results from",
        [sel.prompt_set, *earlier, ALL_SETS],
        # radio options are markdown; a set's name can be an uploaded file's name
        format_func=title,
        horizontal=True,
        key=key,
        help="Prompt sets are never pooled: with all sets, every set gets its own curves and rows.",
    )
    return None if choice == ALL_SETS else (choice,)


def copyright_toggle(key: str) -> bool:
    return st.toggle(
        "Count copyright behaviours in the keyword judge's ASR",
        value=False,
        key=key,
        help="HarmBench copyright behaviours cannot be judged by the HarmBench classifier, so by default "
        "they are left out of every judge's ASR (and counted apart) so that judges count the same prompts.",
    )
