"""Linear probes: per layer, harmful vs benign, scored by stratified k-fold cross-validation.

Two probes on the same folds: a standardised logistic regression (mean accuracy, std, AUROC and the
per-prompt out-of-fold correctness) and the difference-of-means direction (project, threshold half-way
between the class means). Folds and the logistic classifier come from ``engine.probes.cv``, shared with the
content baselines (``engine.probes.baselines``); the harm-detection rule is ``engine.lag``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine.probes.cv import DEFAULT_FOLDS, DEFAULT_SEED, Splits, logistic_probe, stratified_folds

if TYPE_CHECKING:  # only annotations: collecting activations needs torch, reading them does not
    from engine.probes.activations import Activations

__all__ = ["DEFAULT_FOLDS", "DEFAULT_SEED", "LayerProbe", "logistic_probe", "probe_layers"]


@dataclass(frozen=True)
class LayerProbe:
    """Cross-validated harmful-vs-benign probes at one layer."""

    layer: int
    accuracy: float  # logistic regression, mean over folds
    accuracy_std: float
    auroc: float
    dom_accuracy: float  # difference-of-means direction with a mid-point threshold, mean over folds
    folds: int
    correct: tuple[bool, ...] = ()  # logistic probe right on each prompt, out of fold (the baselines' test)


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
    splits = stratified_folds(y, folds, seed)  # the folds the content baselines use too
    # Tiny matrices: multi-threaded BLAS only adds contention (a fit was 50x slower on 2 busy cores).
    with threadpool_limits(limits=1, user_api="blas"):
        return [
            _probe_layer(activations.layer(layer).astype(np.float64), y, layer, splits, C)
            for layer in range(activations.n_layers + 1)
        ]


def _probe_layer(x: np.ndarray, y: np.ndarray, layer: int, splits: Splits, C: float) -> LayerProbe:
    """One fit per fold gives accuracy, AUROC and per-prompt correctness (what sklearn's
    ``cross_validate`` with accuracy and roc_auc scoring computes, without fitting twice)."""
    from sklearn.base import clone
    from sklearn.metrics import roc_auc_score

    accuracies, aurocs = [], []
    correct = np.zeros(len(y), dtype=bool)
    for train, test in splits:
        model = clone(logistic_probe(C)).fit(x[train], y[train])
        score = model.decision_function(x[test])  # the roc_auc scorer's choice; predict is score > 0
        correct[test] = (score > 0) == y[test]
        accuracies.append(correct[test].mean())
        aurocs.append(roc_auc_score(y[test], score))
    return LayerProbe(
        layer=layer,
        accuracy=float(np.mean(accuracies)),
        accuracy_std=float(np.std(accuracies)),
        auroc=float(np.mean(aurocs)),
        dom_accuracy=float(np.mean([_dom_fold_accuracy(x, y, train, test) for train, test in splits])),
        folds=len(splits),
        correct=tuple(bool(c) for c in correct),
    )
