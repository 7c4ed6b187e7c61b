"""engine.probes.baselines and engine.probes.cv against scikit-learn cross-validation and hand-counted
McNemar tests."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from engine import lag, probes
from engine.probes import baselines, cv
from engine.types import GenerationParams

HARMFUL_WORDS = ["bomb", "poison", "weapon", "malware", "steal", "hack"]
BENIGN_WORDS = ["bread", "poem", "garden", "music", "recipe", "travel"]


def _prompts(n_per_class: int = 20, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Texts whose content words carry the label, with shared filler and some label noise."""
    rng = np.random.default_rng(seed)
    fillers = ["how do I", "tell me about", "write something on", "explain the", "what is a good"]
    texts, labels = [], []
    for i in range(2 * n_per_class):
        harmful = i % 2 == 0
        words = HARMFUL_WORDS if (harmful != (rng.random() < 0.15)) else BENIGN_WORDS  # 15 % misleading
        texts.append(f"{fillers[i % len(fillers)]} {rng.choice(words)} {rng.choice(fillers)}")
        labels.append(harmful)
    return texts, np.array(labels)


def _embeddings(n: int, harmful: np.ndarray, seed: int = 1) -> list[np.ndarray]:
    """One [tokens, 8] array per prompt; the label shifts one coordinate of every token a little."""
    rng = np.random.default_rng(seed)
    out = []
    for label in harmful:
        tokens = rng.normal(size=(int(rng.integers(3, 9)), 8))
        tokens[:, 0] += 0.8 if label else -0.8
        out.append(tokens)
    return out


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """The reference fits on tiny matrices are many times slower with threads on busy cores."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ---------------------------------------------------------------- folds


def test_folds_are_sklearns_stratified_shuffled_kfold():
    _, y = _prompts()
    splits = cv.stratified_folds(y, folds=5, seed=3)
    expected = StratifiedKFold(n_splits=5, shuffle=True, random_state=3).split(np.zeros(len(y)), y)
    for (train, test), (train_ref, test_ref) in zip(splits, expected, strict=True):
        assert np.array_equal(train, train_ref) and np.array_equal(test, test_ref)
    assert len(cv.stratified_folds(np.array([1, 1, 1, 0, 0, 0, 0], bool), folds=5)) == 3  # smallest class
    with pytest.raises(ValueError, match="at least 2 harmful and 2 benign"):
        cv.stratified_folds(np.array([True, False, False]))


def test_probes_use_the_shared_folds_and_classifier():
    """The baseline's per-prompt probe correctness averages, fold by fold, to probe_layers' accuracy."""
    _, y = _prompts(12)
    rng = np.random.default_rng(5)
    residuals = rng.normal(size=(len(y), 3, 6)).astype(np.float32)
    residuals[:, 1:, 0] += np.where(y, 1.0, -1.0)[:, None]  # layers 1 and 2 carry the label
    acts = probes.Activations("m", "s", GenerationParams(), residuals, y, tuple(map(str, range(len(y)))))
    splits = cv.stratified_folds(y, seed=4)
    correct = baselines.probe_correctness(residuals, y, splits)
    for probe in probes.probe_layers(acts, seed=4):
        assert cv.fold_mean_accuracy(correct[probe.layer], splits) == pytest.approx(probe.accuracy, abs=1e-12)


def test_out_of_fold_needs_a_partition():
    _, y = _prompts(6)
    splits = cv.stratified_folds(y)
    with pytest.raises(ValueError, match="exactly one test fold"):
        cv.out_of_fold_correct(cv.logistic_probe(), np.zeros((len(y), 2)), y, splits[:-1])


# ---------------------------------------------------------------- baselines


@pytest.mark.parametrize("seed", [0, 1])
def test_bag_of_words_matches_sklearn_cross_validation(seed):
    texts, y = _prompts(seed=seed)
    splits = cv.stratified_folds(y, seed=seed)
    result = baselines.bag_of_words_baseline(texts, y, splits)
    pipeline = make_pipeline(CountVectorizer(), LogisticRegression(max_iter=2000))
    assert result.accuracy == pytest.approx(cross_val_score(pipeline, texts, y, cv=splits).mean(), abs=1e-12)
    assert np.array_equal(result.correct, cross_val_predict(pipeline, texts, y, cv=splits) == y)
    assert result.name == baselines.BASELINE_BOW
    assert 0.7 <= result.accuracy < 1.0  # the content words give it away, up to the 15 % misleading ones


@pytest.mark.parametrize("seed", [0, 1])
def test_embedding_baseline_matches_sklearn_cross_validation(seed):
    _, y = _prompts(seed=seed)
    per_prompt = _embeddings(len(y), y, seed)
    splits = cv.stratified_folds(y, seed=seed)
    result = baselines.embedding_baseline(per_prompt, y, splits)
    x = np.stack([tokens.mean(axis=0) for tokens in per_prompt])
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    assert result.accuracy == pytest.approx(cross_val_score(pipeline, x, y, cv=splits).mean(), abs=1e-12)
    assert np.array_equal(result.correct, cross_val_predict(pipeline, x, y, cv=splits) == y)
    assert result.accuracy > 0.7


def test_mean_embeddings_checks_shapes():
    assert np.array_equal(baselines.mean_embeddings([np.array([[1.0, 2.0], [3.0, 6.0]])]), [[2.0, 4.0]])
    with pytest.raises(ValueError, match="non-empty"):
        baselines.mean_embeddings([np.zeros((0, 4))])
    with pytest.raises(ValueError, match="same hidden size"):
        baselines.mean_embeddings([np.zeros((2, 4)), np.zeros((2, 5))])
    with pytest.raises(ValueError, match="one label per prompt"):
        baselines.embedding_baseline([np.zeros((2, 4))] * 4, np.array([True, False]), [])


# ---------------------------------------------------------------- the harm-detection rule


def _correct(n_right: int, n: int = 100, offset: int = 0) -> np.ndarray:
    """bool [n] right on prompts offset .. offset + n_right - 1 (cyclically)."""
    out = np.zeros(n, dtype=bool)
    out[(np.arange(n_right) + offset) % n] = True
    return out


def test_harm_detection_is_the_first_layer_clearly_beating_the_best_baseline():
    bow, embedding = _correct(80), _correct(70)  # best baseline: bag of words, 0.80, right on 0..79
    probe = np.stack(
        [
            _correct(50),  # layer 0: worse
            _correct(84),  # layer 1: 0.84, gain 0.04 < margin (4 vs 0 discordant, p = 1/16)
            _correct(86, offset=92),  # layer 2: 0.86 but right on 92..99, 0..77: 8 vs 2 -> p = 56/1024 > 0.05
            _correct(90),  # layer 3: 0.90, 10 vs 0 -> p = 1/1024: detected
            _correct(100),
        ]
    )
    rows = lag.layers_vs_baseline(probe, {"embedding": embedding, "bow": bow})
    assert [(r.probe_only, r.baseline_only) for r in rows] == [(0, 30), (4, 0), (8, 2), (10, 0), (20, 0)]
    for r in rows:
        expected = binomtest(r.probe_only, r.probe_only + r.baseline_only, 0.5, "greater").pvalue
        assert r.p_value == pytest.approx(expected if r.probe_only + r.baseline_only else 1.0, rel=1e-12)
    assert rows[2].p_value == pytest.approx(56 / 1024)
    assert [r.passes for r in rows] == [False, False, False, True, True]
    assert rows[3].gain == pytest.approx(0.10) and rows[3].baseline_accuracy == 0.8
    assert lag.detect_harm(probe, {"embedding": embedding, "bow": bow}) == 3
    # a looser test level or a smaller margin moves it earlier; a probe no better than the baseline: None
    assert lag.detect_harm(probe, {"bow": bow}, alpha=0.06) == 2
    assert lag.detect_harm(probe[:3], {"bow": bow}) is None
    assert lag.detect_harm(probe, {"bow": bow, "perfect": _correct(100)}) is None


def test_an_exact_margin_counts_and_shapes_are_checked():
    bow = _correct(80)
    probe = np.stack([_correct(85)])  # gain exactly 0.05, 5 vs 0 discordant -> p = 1/32
    assert lag.layers_vs_baseline(probe, {"bow": bow})[0].passes
    with pytest.raises(ValueError, match="layers, 100"):
        lag.layers_vs_baseline(_correct(50), {"bow": bow})
    with pytest.raises(ValueError, match="at least one"):
        lag.detect_harm(probe, {})
