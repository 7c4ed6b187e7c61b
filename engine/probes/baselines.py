"""Content-only controls for the per-layer harm probes. numpy + scikit-learn only:
no torch, no I/O.

A probe that separates harmful from benign prompts proves little if the prompts' words already do.
Two baselines read the content alone, on exactly the folds the probes use (``engine.probes.cv``):

* bag of words: word counts of the prompt text (vocabulary fitted on the training folds), logistic
  regression;
* mean embedding: the mean of the prompt's input-token embeddings (the caller looks them up; this
  module takes one [tokens, hidden] array per prompt), the probe's own standardised logistic regression.

The harm-detection layer is defined relative to these baselines by ``engine.lag`` (the one home of
the rule): the probe must beat the best baseline on the same prompts and folds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.probes.cv import Splits, fold_mean_accuracy, logistic_probe, out_of_fold_correct

BASELINE_BOW = "bow"
BASELINE_EMBEDDING = "embedding"
BASELINE_KIND_PREFIX = "baseline-"  # store kind of a baseline's probe record: "baseline-bow", ...


@dataclass(frozen=True)
class BaselineResult:
    """One content baseline on the probes' folds."""

    name: str
    correct: np.ndarray  # bool [n]: out-of-fold correctness per prompt
    accuracy: float  # mean over folds, as the probes report it (``LayerProbe.accuracy``)


def bag_of_words_classifier(C: float = 1.0):
    """Word counts (lower-cased, unigrams) into a logistic regression; the vocabulary is fitted per fold."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(CountVectorizer(), LogisticRegression(C=C, max_iter=2000))


def bag_of_words_baseline(
    texts: Sequence[str], harmful: np.ndarray, splits: Splits, C: float = 1.0
) -> BaselineResult:
    """Bag-of-words logistic regression on the prompt texts (the text the probe's model reads, without
    the chat template), scored on ``splits``."""
    harmful = _labels(harmful, len(texts))
    correct = out_of_fold_correct(bag_of_words_classifier(C), list(texts), harmful, splits)
    return BaselineResult(BASELINE_BOW, correct, fold_mean_accuracy(correct, splits))


def mean_embeddings(token_embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """[n, hidden] float64: each prompt's [tokens, hidden] input embeddings averaged over its tokens."""
    means = []
    for index, embedded in enumerate(token_embeddings):
        embedded = np.asarray(embedded, dtype=np.float64)
        if embedded.ndim != 2 or embedded.shape[0] == 0:
            raise ValueError(
                f"prompt {index}: need a non-empty [tokens, hidden] array, got shape {embedded.shape}"
            )
        means.append(embedded.mean(axis=0))
    if len({m.shape for m in means}) > 1:
        raise ValueError("every prompt's embeddings must have the same hidden size")
    return np.stack(means)


def embedding_baseline(
    token_embeddings: Sequence[np.ndarray], harmful: np.ndarray, splits: Splits, C: float = 1.0
) -> BaselineResult:
    """The probe's classifier on the mean input-token embedding of each prompt, scored on ``splits``."""
    return mean_embedding_baseline(mean_embeddings(token_embeddings), harmful, splits, C)


def mean_embedding_baseline(
    means: np.ndarray, harmful: np.ndarray, splits: Splits, C: float = 1.0
) -> BaselineResult:
    """``embedding_baseline`` from the prompts' mean embeddings [n, hidden], already averaged (the
    probe command averages them batched in torch)."""
    x = np.asarray(means, dtype=np.float64)
    harmful = _labels(harmful, len(x))
    correct = out_of_fold_correct(logistic_probe(C), x, harmful, splits)
    return BaselineResult(BASELINE_EMBEDDING, correct, fold_mean_accuracy(correct, splits))


def _labels(harmful: np.ndarray, n: int) -> np.ndarray:
    harmful = np.asarray(harmful, dtype=bool)
    if harmful.shape != (n,):
        raise ValueError(f"need one label per prompt: {n} prompts, labels of shape {harmful.shape}")
    return harmful


def probe_correctness(
    residuals: np.ndarray, harmful: np.ndarray, splits: Splits, C: float = 1.0
) -> np.ndarray:
    """bool [layers, n]: the per-layer probe's out-of-fold correctness per prompt, from residuals
    [n, layers, hidden] (``Activations.residuals``), with the probe's classifier on ``splits``.
    Its fold means are ``probe_layers``' accuracies when ``splits`` are the probes' folds."""
    from threadpoolctl import threadpool_limits

    residuals = np.asarray(residuals)
    harmful = _labels(harmful, residuals.shape[0])
    with threadpool_limits(limits=1, user_api="blas"):
        return np.stack(
            [
                out_of_fold_correct(
                    logistic_probe(C), residuals[:, layer].astype(np.float64), harmful, splits
                )
                for layer in range(residuals.shape[1])
            ]
        )
