"""Where tuned lenses live and what their JSON sidecars say (torch-free: pages read the KL curves).

A lens for a model is ``data/lenses/<model_hash>.pt`` (the translators) next to
``data/lenses/<model_hash>.json``: model hash and name, lens hash, corpus, steps, and the held-out KL
per layer for the tuned and the raw head (``kl_tuned[k-1]``, ``kl_raw[k-1]`` for k = 1..L, in nats).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from engine.errors import DepthScopeError
from engine.paths import LENS_DIR
from engine.types import GenerationParams


class LensNotFoundError(DepthScopeError, FileNotFoundError):
    """No tuned lens for this model (or not the one asked for); the message says how to train one."""


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


def lens_hash_for(model_hash: str, model_name: str = "", directory: Path | None = None) -> str:
    """The content hash of the model's tuned lens, from its sidecar (raises LensNotFoundError)."""
    report = read_lens_report(model_hash, directory)
    if report is None or not lens_weights_path(model_hash, directory).exists():
        name = model_name or model_hash
        raise LensNotFoundError(
            f"no tuned lens for {name} (model hash {model_hash}) in {directory or LENS_DIR}: train one with "
            f"`python -m engine lens train --model {name}`, or use --exit-head raw"
        )
    return str(report["lens_hash"])


def exit_variants_for(
    model_hash: str,
    params: GenerationParams,
    thresholds: Sequence[float] | None = None,
    *,
    model_name: str = "",
    directory: Path | None = None,
) -> list[GenerationParams]:
    """Torch-free twin of ``engine.generation.exit_variants``: each threshold's exact params (the tuned
    head's lens hash read from the sidecar), whose ``key()`` is its completions' params hash. A worker
    that loads a different lens refuses the params (``engine.exits.resolve_head``), so the two agree."""
    if params.exit_head == "tuned":
        lens_hash = lens_hash_for(model_hash, model_name, directory)
        if params.lens_hash and params.lens_hash != lens_hash:
            raise LensNotFoundError(
                f"the tuned lens for this model has hash {lens_hash}, not {params.lens_hash}: retrain it "
                "or drop the lens hash to use the current one"
            )
        params = replace(params, lens_hash=lens_hash)
    if not params.dynamic_exit:
        return [params]
    return [replace(params, threshold=float(t)) for t in dict.fromkeys(thresholds or [params.threshold])]
