"""What the sidebar picked (model, prompt set, database, generation settings), read from session state."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from engine.types import GenerationParams
from pages._paths import checked_source, default_db, default_model, resolve_db

OTHER_MODEL = "__other__"  # the model picker's "type a path" choice
DEFAULT_PROMPT_SET = "demo"


@dataclass(frozen=True)
class Selection:
    """What the sidebar picked: shared by every page."""

    model: str  # a name, a hub id, or a checked absolute path
    prompt_set: str
    db: str  # resolved path, as a string (a cache key)
    params: GenerationParams


def selection() -> Selection:
    """The current sidebar choices (the sidebar is drawn before the page)."""
    state = st.session_state
    model = state.get("model_choice", default_model())
    if model == OTHER_MODEL:
        # the resolved absolute path that was checked, not the typed text (which the loader would
        # resolve against the server's working folder)
        source, _problem = checked_source(state.get("model_path") or "", "model path")
        model = source or default_model()
    return Selection(
        model=model,
        prompt_set=state.get("prompt_set", DEFAULT_PROMPT_SET),
        db=str(resolve_db(state.get("db", default_db()))),
        params=GenerationParams(
            max_new_tokens=int(state.get("max_new_tokens", GenerationParams.max_new_tokens)),
            chat_template=bool(state.get("chat_template", True)),
            system_prompt=(state.get("system_prompt") or "").strip() or None,
        ),
    )
