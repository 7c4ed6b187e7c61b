"""Linear probes: per layer, harmful vs benign, scored by stratified k-fold cross-validation.

Two probes on the same folds: a standardised logistic regression (mean accuracy, std, AUROC) and the
difference-of-means direction (project, threshold half-way between the class means). The harm-
detection layer is the first whose logistic accuracy reaches ``engine.lag.HARM_DETECTION_ACCURACY``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine import lag

if TYPE_CHECKING:  # only annotations: collecting activations needs torch, reading them does not
    from engine.probes.activations import Activations

DEFAULT_FOLDS = 5
DEFAULT_SEED = 0


@dataclass(frozen=True)
class LayerProbe:
    """Cross-validated harmful-vs-benign probes at one layer."""

    layer: int
    accuracy: float  # logistic regression, mean over folds
    accuracy_std: float
    auroc: float
    dom_accuracy: float  # difference-of-means direction with a mid-point threshold, mean over folds
    folds: int


def _folds(harmful: np.ndarray, folds: int, seed: int):
    from sklearn.model_selection import StratifiedKFold

    smallest = int(min(harmful.sum(), (~harmful).sum()))
    if smallest < 2:
        raise ValueError(
            f"probing needs at least 2 harmful and 2 benign prompts (got {int(harmful.sum())} harmful, "
            f"{int((~harmful).sum())} benign): use a prompt set with a label column, e.g. 'demo'"
        )
    return StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)


def logistic_probe(C: float = 1.0):
    """The probe: standardise inside the pipeline, so each fold is scaled by its own training data."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))


def _dom_fold_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    mean_h, mean_b = x[train][y[train]].mean(0), x[train][~y[train]].mean(0)
    direction = mean_h - mean_b
    threshold = (mean_h + mean_b) @ direction / 2
    return float(((x[test] @ direction > threshold) == y[test]).mean())


def probe_layers(
    activations: Activations, *, folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED, C: float = 1.0
) -> list[LayerProbe]:
    """Logistic-regression and diff-of-means probes at every layer 0..L, on the same stratified folds."""
    from threadpoolctl import threadpool_limits

    y = activations.harmful
    splits = list(_folds(y, folds, seed).split(np.zeros(len(y)), y))
    # Tiny matrices: multi-threaded BLAS only adds contention (a fit was 50x slower on 2 busy cores).
    with threadpool_limits(limits=1, user_api="blas"):
        return [
            _probe_layer(activations.layer(layer).astype(np.float64), y, layer, splits, C)
            for layer in range(activations.n_layers + 1)
        ]


def _probe_layer(x: np.ndarray, y: np.ndarray, layer: int, splits: list, C: float) -> LayerProbe:
    from sklearn.model_selection import cross_validate

    scores = cross_validate(logistic_probe(C), x, y, cv=splits, scoring=("accuracy", "roc_auc"))
    return LayerProbe(
        layer=layer,
        accuracy=float(scores["test_accuracy"].mean()),
        accuracy_std=float(scores["test_accuracy"].std()),
        auroc=float(scores["test_roc_auc"].mean()),
        dom_accuracy=float(np.mean([_dom_fold_accuracy(x, y, train, test) for train, test in splits])),
        folds=len(splits),
    )


def harm_detection_layer(
    probes: Sequence[LayerProbe], threshold: float = lag.HARM_DETECTION_ACCURACY
) -> int | None:
    """First layer whose cross-validated probe accuracy reaches ``threshold`` (None if none does)."""
    return lag.harm_detection_layer([p.layer for p in probes], [p.accuracy for p in probes], threshold)
