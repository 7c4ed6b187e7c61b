"""Where a model represents "this prompt is harmful": activations, linear probes, directions, ablation.

* ``activations``: the last-token residual stream at every layer, cached under ``data/activations/``.
* ``linear``: per-layer logistic and diff-of-means probes (cross-validated), the harm-detection layer.
* ``directions``: per-layer directions, their cosines, the refusal direction.
* ``ablation``: project a direction out of the residual stream while generating (imports torch).
* ``analysis`` / ``records``: the whole analysis, and what it leaves in files and the store.

Importing this package loads numpy only (the CLI and the dashboard import it at start-up): torch,
scikit-learn and the lens load when a computation needs them, and the ablation module on first use.
"""

from __future__ import annotations

from typing import Any

from engine.lag import HARM_DETECTION_ACCURACY
from engine.probes.activations import ACTIVATIONS_DIR, Activations, activations_path, collect_activations
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
    harm_detection_layer,
    logistic_probe,
    probe_layers,
)
from engine.probes.records import probe_records, save_directions, summary_row

_TORCH_NAMES = ("ablated_direction", "generate_ablated")

__all__ = [
    "ACTIVATIONS_DIR",
    "DEFAULT_FOLDS",
    "DEFAULT_SEED",
    "HARM_DETECTION_ACCURACY",
    "Activations",
    "LayerProbe",
    "ProbeAnalysis",
    "activations_path",
    "analyse",
    "analyse_collected",
    "analyse_with",
    "collect_activations",
    "cosine_matrix",
    "diff_of_means_directions",
    "harm_detection_layer",
    "logistic_probe",
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
