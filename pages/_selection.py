"""What the sidebar picked (model, prompt set, database, generation settings), read from session state."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from engine.types import GenerationParams
from pages._paths import default_db, default_model, path_problem, resolve_db

OTHER_MODEL = "__other__"  # the model picker's "type a path" choice
DEFAULT_PROMPT_SET = "demo"


@dataclass(frozen=True)
class Selection:
    """What the sidebar picked: shared by every page."""

    model: str
    prompt_set: str
    db: str  # resolved path, as a string (a cache key)
    params: GenerationParams


def selection() -> Selection:
    """The current sidebar choices (the sidebar is drawn before the page)."""
    state = st.session_state
    model = state.get("model_choice", default_model())
    if model == OTHER_MODEL:
        model = (state.get("model_path") or "").strip()
        model = model if model and path_problem(model, "model path") is None else default_model()
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
