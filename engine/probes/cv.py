"""Cross-validation shared by the per-layer probes (engine.probes) and their content baselines
(engine.probes.baselines): one fold maker and one probe classifier, so every accuracy compared across them
is computed on exactly the same folds. numpy + scikit-learn only (imported inside functions)."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.errors import UserInputError

DEFAULT_FOLDS = 5
DEFAULT_SEED = 0

Splits = list[tuple[np.ndarray, np.ndarray]]  # (train indices, test indices) per fold


def stratified_folds(harmful: np.ndarray, folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED) -> Splits:
    """Stratified, shuffled k-fold splits of the prompts by label (fewer folds if a class is small)."""
    from sklearn.model_selection import StratifiedKFold

    harmful = np.asarray(harmful, dtype=bool)
    smallest = require_both_classes(harmful)
    splitter = StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(harmful)), harmful))


def require_both_classes(harmful) -> int:
    """The smaller class's size; a user error (before any compute, when called first) unless both the
    harmful and the benign class hold at least two prompts, the least a stratified split can use."""
    harmful = np.asarray(harmful, dtype=bool)
    smallest = int(min(harmful.sum(), (~harmful).sum()))
    if smallest < 2:
        raise UserInputError(
            f"probing needs at least 2 harmful and 2 benign prompts (got {int(harmful.sum())} harmful, "
            f"{int((~harmful).sum())} benign): use a prompt set with a label column, e.g. 'demo'"
        )
    return smallest


def logistic_probe(C: float = 1.0):
    """The probe: standardise inside the pipeline, so each fold is scaled by its own training data."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))


def out_of_fold_correct(estimator: Any, x: Any, y: np.ndarray, splits: Splits) -> np.ndarray:
    """bool [n]: whether each prompt is classified right by a fresh copy of ``estimator`` fitted on the
    other folds. ``splits`` must partition the prompts (every prompt in exactly one test fold)."""
    from sklearn.base import clone
    from threadpoolctl import threadpool_limits

    y = np.asarray(y, dtype=bool)
    tested = np.zeros(len(y), dtype=int)
    correct = np.zeros(len(y), dtype=bool)
    # Tiny matrices: multi-threaded BLAS only adds contention (15x slower on 2 busy cores).
    with threadpool_limits(limits=1, user_api="blas"):
        for train, test in splits:
            model = clone(estimator).fit(_rows(x, train), y[train])
            correct[test] = np.asarray(model.predict(_rows(x, test)), dtype=bool) == y[test]
            tested[test] += 1
    if not (tested == 1).all():
        raise ValueError("the folds must put every prompt in exactly one test fold")
    return correct


def fold_mean_accuracy(correct: np.ndarray, splits: Splits) -> float:
    """Mean over folds of the test-fold accuracy: how the probes report accuracy (cross_val_score mean)."""
    return float(np.mean([np.asarray(correct)[test].mean() for _, test in splits]))


def _rows(x: Any, index: np.ndarray) -> Any:
    if isinstance(x, np.ndarray) or hasattr(x, "tocsr"):
        return x[index]
    return [x[i] for i in index]  # a list of texts
