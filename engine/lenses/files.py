"""Where tuned lenses live and what their JSON sidecars say (torch-free: pages read the KL curves).

A lens for a model is ``data/lenses/<model_hash>.pt`` (the translators) next to
``data/lenses/<model_hash>.json``: model hash and name, lens hash, corpus, steps, and the held-out KL
per layer for the tuned and the raw head (``kl_tuned[k-1]``, ``kl_raw[k-1]`` for k = 1..L, in nats).
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from engine.errors import DepthScopeError
from engine.paths import LENS_DIR
from engine.types import GenerationParams


class LensNotFoundError(DepthScopeError, FileNotFoundError):
    """No tuned lens for this model (or not the one asked for); the message says how to train one."""


class DamagedLensError(LensNotFoundError):
    """A lens file exists but cannot be used (unreadable, malformed, non-finite, for another model, or
    not the lens its sidecar names): no usable lens, so the same handling and the same remedy."""


def damaged_lens(path: Path, problem: str, model_name: str = "") -> DamagedLensError:
    """One sentence naming the file, what is wrong with it and the command that rebuilds it."""
    model = shlex.quote(model_name) if model_name else "MODEL"
    return DamagedLensError(
        f"the tuned lens file {path} {problem}: rebuild it with "
        f"`python -m engine lens train --model {model}` (or use --exit-head raw)"
    )


def lens_weights_path(model_hash: str, directory: Path | None = None) -> Path:
    return (directory or LENS_DIR) / f"{model_hash}.pt"


def lens_sidecar_path(model_hash: str, directory: Path | None = None) -> Path:
    return (directory or LENS_DIR) / f"{model_hash}.json"


def read_lens_report(model_hash: str, directory: Path | None = None, model_name: str = "") -> dict | None:
    """The sidecar of the model's tuned lens, or None when no lens was trained for it.

    Raises DamagedLensError when the file is unreadable or does not follow the sidecar's schema.
    """
    path = lens_sidecar_path(model_hash, directory)
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise damaged_lens(path, f"cannot be read as JSON ({exc})", model_name) from exc
    problem = sidecar_problem(report, model_hash)
    if problem:
        raise damaged_lens(path, problem, model_name)
    return report


def _finite_numbers(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )


def sidecar_problem(report: object, model_hash: str) -> str | None:
    """What makes ``report`` no valid sidecar for the model ``model_hash`` (None when it is one)."""
    if not isinstance(report, dict):
        return f"holds a JSON {type(report).__name__}, not an object"
    if report.get("model_hash") != model_hash:
        return f"names model hash {report.get('model_hash')!r}, not {model_hash}"
    lens_hash = report.get("lens_hash")
    if not isinstance(lens_hash, str) or not lens_hash.strip():
        return "has no lens hash"
    n_layers = report.get("n_layers")
    if n_layers is not None and (isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1):
        return f"has n_layers {n_layers!r}, not a whole number ≥ 1"
    for field in ("kl_tuned", "kl_raw"):
        if field not in report:
            continue
        values = report[field]
        if not _finite_numbers(values):
            return f"has a {field} that is not a list of finite numbers"
        if n_layers is not None and len(values) != n_layers:
            return f"has {len(values)} {field} values for {n_layers} layers"
    return None


def lens_hash_for(model_hash: str, model_name: str = "", directory: Path | None = None) -> str:
    """The content hash of the model's tuned lens, from its sidecar (raises LensNotFoundError)."""
    report = read_lens_report(model_hash, directory, model_name)
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
    that loads a different lens refuses the params (``engine.lenses.heads.resolve_head``), so the two
    agree."""
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
