"""Where tuned lenses live and what their JSON sidecars say (torch-free: pages read the KL curves).

A lens for a model is ``data/lenses/<model_hash>.pt`` (the translators) next to
``data/lenses/<model_hash>.json``: model hash and name, lens hash, corpus, steps, and the held-out KL
per layer for the tuned and the raw head (``kl_tuned[k-1]``, ``kl_raw[k-1]`` for k = 1..L, in nats).
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.paths import LENS_DIR


def lens_weights_path(model_hash: str, directory: Path | None = None) -> Path:
    return (directory or LENS_DIR) / f"{model_hash}.pt"


def lens_sidecar_path(model_hash: str, directory: Path | None = None) -> Path:
    return (directory or LENS_DIR) / f"{model_hash}.json"


def read_lens_report(model_hash: str, directory: Path | None = None) -> dict | None:
    """The sidecar of the model's tuned lens, or None when no lens was trained for it."""
    path = lens_sidecar_path(model_hash, directory)
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
