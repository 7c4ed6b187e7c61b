"""Where a model represents "this prompt is harmful": activations, linear probes, directions, ablation.

* ``activations``: the last-token residual stream at every layer, cached under ``data/activations/``.
* ``linear``: per-layer logistic and diff-of-means probes (cross-validated on ``cv``'s folds); their
  content baselines are ``baselines`` (both torch-free, numpy + scikit-learn), the harm-detection rule
  ``engine.lag``'s.
* ``directions``: per-layer directions, their cosines, the refusal direction.
* ``ablation``: project a direction out of the residual stream while generating (imports torch).
* ``analysis`` / ``records``: the whole analysis, and what it leaves in files and the store.

Importing this package loads numpy only (the CLI and the dashboard import it at start-up): torch,
scikit-learn and the lens load when a computation needs them, and the ablation module on first use.
"""

from __future__ import annotations

from typing import Any

from engine.probes.activations import (
    ACTIVATIONS_DIR,
    Activations,
    activations_path,
    collect_activations,
    mean_input_embeddings,
)
from engine.probes.analysis import ProbeAnalysis, analyse, analyse_collected, analyse_with
from engine.probes.directions import (
    cosine_matrix,
    diff_of_means_directions,
    probe_directions,
    refusal_direction,
    unit,
)
from engine.probes.linear import (
    DEFAULT_FOLDS,
    DEFAULT_SEED,
    LayerProbe,
    logistic_probe,
    probe_layers,
)
from engine.probes.records import (
    baseline_records,
    baseline_summary,
    probe_records,
    save_directions,
    summary_row,
)

_TORCH_NAMES = ("ablated_direction", "generate_ablated")

__all__ = [
    "ACTIVATIONS_DIR",
    "DEFAULT_FOLDS",
    "DEFAULT_SEED",
    "Activations",
    "LayerProbe",
    "ProbeAnalysis",
    "activations_path",
    "analyse",
    "analyse_collected",
    "analyse_with",
    "baseline_records",
    "baseline_summary",
    "collect_activations",
    "cosine_matrix",
    "diff_of_means_directions",
    "logistic_probe",
    "mean_input_embeddings",
    "probe_directions",
    "probe_layers",
    "probe_records",
    "refusal_direction",
    "save_directions",
    "summary_row",
    "unit",
    *_TORCH_NAMES,
]


def __getattr__(name: str) -> Any:
    """The ablation names, loaded (with torch) on first use."""
    if name in _TORCH_NAMES:
        from engine.probes import ablation

        return getattr(ablation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
