"""Which results a page shows: the sidebar's prompt set or, said explicitly, every set (never pooled
silently), for the sidebar's generation-settings scope, and whether the keyword judge counts HarmBench
copyright behaviours."""

from __future__ import annotations

import streamlit as st

from pages import _queries
from pages._display import md_escape
from pages._selection import SCOPE_STATE, Selection
from pages._sidebar import scope_options, set_title

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


def settings_caption(sel: Selection) -> None:
    """The scope the page's numbers come from, in words."""
    st.caption(
        f"Results for {md_escape(sel.scope.describe())} (change under “Results for settings” in the sidebar)."
    )


def _switch_scope(key: str) -> None:
    st.session_state[SCOPE_STATE] = key


def offer_other_scopes(sel: Selection, prompt_sets: tuple[str, ...] | None, what: str) -> bool:
    """When nothing is stored for the chosen scope: say which scopes have answers to these prompts and
    offer to switch (True when there are some, after saying so)."""
    scopes = [s for s in _queries.settings_scopes(sel.db, None, prompt_sets) if s.key != sel.scope.key]
    if not scopes:
        return False
    st.info(
        md_escape(
            f"No {what} with {sel.scope.describe()} yet. Stored answers to these prompts use other settings: "
            "switch to one of them below, or start a sweep with these settings."
        )
    )
    switchable, _labels = scope_options(sel.db, sel.model, sel.prompt_set)
    for index, summary in enumerate(scopes):
        if summary.key in switchable:
            st.button(
                md_escape(f"Show {summary.label()}"),
                key=f"switch-scope-{index}",
                on_click=_switch_scope,
                args=(summary.key,),
            )
        else:
            st.caption(md_escape(f"{summary.label()}: another prompt set; pick it in the sidebar first."))
    return True
