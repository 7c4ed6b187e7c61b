"""Content-only controls for the per-layer harm probes (issue 13, point 5), and the harm-detection rule
relative to them. numpy + scikit-learn only: no torch, no I/O.

A probe that separates harmful from benign prompts proves little if the prompts' words already do.
Two baselines read the content alone, on exactly the folds the probes use (``engine.cv``):

* bag of words: word counts of the prompt text (vocabulary fitted on the training folds), logistic
  regression;
* mean embedding: the mean of the prompt's input-token embeddings (the caller looks them up; this
  module takes one [tokens, hidden] array per prompt), the probe's own standardised logistic regression.

Harm-detection rule: the first layer whose probe beats the *best* baseline by at least
``HARM_DETECTION_MARGIN`` accuracy (per-prompt out-of-fold accuracy, both on the same prompts and folds)
*and* whose advantage is significant by a one-sided exact McNemar test on the paired per-prompt
correctness (probe right / baseline wrong vs the reverse), p < ``HARM_DETECTION_ALPHA``. Each layer is
tested on its own (no correction across layers); the margin keeps a trivially small gain from counting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from engine import stats
from engine.cv import Splits, fold_mean_accuracy, logistic_probe, out_of_fold_correct

HARM_DETECTION_MARGIN = 0.05  # accuracy the probe must gain over the best content baseline
HARM_DETECTION_ALPHA = 0.05  # level of the one-sided McNemar test of that gain
HARM_DETECTION_TEST = f"one-sided McNemar ({stats.MCNEMAR_EXACT}), probe vs best baseline, per prompt"
BASELINE_BOW = "bow"
BASELINE_EMBEDDING = "embedding"


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
    x = mean_embeddings(token_embeddings)
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


# ---------------------------------------------------------------- the harm-detection rule


@dataclass(frozen=True)
class LayerVsBaseline:
    """One layer's probe against the best content baseline, on the same prompts and folds."""

    layer: int
    accuracy: float  # per-prompt out-of-fold accuracy of the probe
    baseline_accuracy: float  # the same for the best baseline
    probe_only: int  # prompts the probe gets right and the baseline wrong
    baseline_only: int  # the reverse
    p_value: float  # one-sided exact McNemar: the probe is right more often
    passes: bool

    @property
    def gain(self) -> float:
        return self.accuracy - self.baseline_accuracy


def best_baseline(baselines: Mapping[str, np.ndarray]) -> tuple[str, np.ndarray]:
    """(name, per-prompt correctness) of the baseline with the highest accuracy (first name on ties)."""
    if not baselines:
        raise ValueError("no baselines given: the rule needs at least one content baseline")
    name = max(sorted(baselines), key=lambda n: np.asarray(baselines[n], dtype=bool).mean())
    return name, np.asarray(baselines[name], dtype=bool)


def layers_vs_baseline(
    probe_correct: np.ndarray,
    baselines: Mapping[str, np.ndarray],
    margin: float = HARM_DETECTION_MARGIN,
    alpha: float = HARM_DETECTION_ALPHA,
) -> list[LayerVsBaseline]:
    """``probe_correct``: bool [layers, n], row i = layer i's per-prompt out-of-fold correctness;
    ``baselines``: name -> bool [n] on the same prompts and folds. One comparison per layer."""
    probe_correct = np.asarray(probe_correct, dtype=bool)
    _, baseline = best_baseline(baselines)
    if probe_correct.ndim != 2 or probe_correct.shape[1] != baseline.shape[0]:
        raise ValueError(
            f"probe correctness must be [layers, {baseline.shape[0]}] to match the baselines' prompts, "
            f"got {probe_correct.shape}"
        )
    baseline_accuracy = float(baseline.mean())
    rows = []
    for layer, correct in enumerate(probe_correct):
        probe_only, baseline_only = int((correct & ~baseline).sum()), int((~correct & baseline).sum())
        p, _ = stats.mcnemar_test(probe_only, baseline_only, stats.MCNEMAR_EXACT, alternative="greater")
        accuracy = float(correct.mean())
        # 1e-12: accuracies are ratios of counts; a gain of exactly the margin must count
        passes = accuracy - baseline_accuracy >= margin - 1e-12 and p < alpha
        rows.append(LayerVsBaseline(layer, accuracy, baseline_accuracy, probe_only, baseline_only, p, passes))
    return rows


def harm_detection_layer(
    probe_correct: np.ndarray,
    baselines: Mapping[str, np.ndarray],
    margin: float = HARM_DETECTION_MARGIN,
    alpha: float = HARM_DETECTION_ALPHA,
) -> int | None:
    """First layer whose probe beats the best content baseline by ``margin`` with McNemar p < ``alpha``
    (module docstring); None if no layer does."""
    return next(
        (r.layer for r in layers_vs_baseline(probe_correct, baselines, margin, alpha) if r.passes), None
    )
