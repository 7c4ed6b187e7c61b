"""The model hub: loaded models shared by every session (``st.cache_resource``), at most a few at once,
and the ``busy`` lock that lets one heavy job use a model at a time, whichever browser tab asks."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import streamlit as st

from engine import modelfiles, queries
from engine.paths import model_source
from engine.store import Store
from engine.types import ModelInfo

if TYPE_CHECKING:  # the pages never import torch; only the hub's load() does, on a button
    from engine.models import LoadedModel

MAX_LOADED_MODELS = 2


class ModelHub:
    """Loaded models by name (at most ``capacity``), and the lock for heavy work on them."""

    def __init__(self, capacity: int = MAX_LOADED_MODELS) -> None:
        self.capacity = capacity
        self.busy = threading.Lock()  # held by whoever runs a model: one job at a time
        self._guard = threading.Lock()
        self._models: dict[str, LoadedModel] = {}

    def get(self, name: str) -> LoadedModel | None:
        with self._guard:
            return self._models.get(name)

    def load(self, name: str) -> LoadedModel:
        """The loaded model, loading it on first use (torch is imported here, never at page load). Every
        model the dashboard loads passes here, so the allow-list is checked here too (a model id stored in
        a database is as untrusted as a typed one), and the loader gets the checked absolute path."""
        source = model_source(name)
        with self._guard:
            if name in self._models:
                self._models[name] = self._models.pop(name)  # most recently used last
                return self._models[name]
        from engine.models import load_model

        loaded = load_model(source)
        with self._guard:
            self._models[name] = loaded
            while len(self._models) > self.capacity:
                self._models.pop(next(iter(self._models)))
        return loaded


@st.cache_resource(show_spinner=False)
def model_hub() -> ModelHub:
    return ModelHub()


def model_info(model: str, store: Store | None) -> ModelInfo | None:
    """What we know about a model without loading it: loaded, else stored, else None."""
    loaded = model_hub().get(model)
    if loaded is not None:
        return loaded.info
    return None if store is None else queries.known_model(store, model)


@st.cache_data(show_spinner=False, max_entries=32)
def peek_n_layers(model: str) -> int | None:
    return modelfiles.peek_n_layers(model)


def n_layers_of(model: str, info: ModelInfo | None) -> int | None:
    """The layer count from what is known about the model, else from its files."""
    return info.n_layers if info is not None else peek_n_layers(model)
