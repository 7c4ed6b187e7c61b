"""engine.stats against hand computations, scipy, statsmodels and scikit-learn."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import pytest
from scipy.stats import fisher_exact as scipy_fisher_exact
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    power_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    samplesize_proportions_2indep_onetail,
)

from engine.stats import (
    Flip,
    agreement,
    asr,
    fisher_exact,
    power_two_proportions,
    ranking_flips,
    sample_size_two_proportions,
    wilson_interval,
)

# ---------------------------------------------------------------- ASR and Wilson


def test_asr_is_the_plain_ratio_and_nan_when_empty():
    assert asr(3, 4) == 0.75
    assert asr(0, 7) == 0.0
    assert math.isnan(asr(0, 0))
    with pytest.raises(ValueError):
        asr(5, 4)


def test_wilson_hand_value_8_of_10():
    # Hand computation: p=0.8, z=1.959964: centre=(0.8+0.19207)/1.38415=0.71674,
    # half=1.959964*sqrt(0.016+0.0096036)/1.38415=0.22657 -> (0.4902, 0.9433).
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.49016, abs=1e-4)
    assert high == pytest.approx(0.94331, abs=1e-4)


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize(
    ("successes", "n"), [(0, 1), (1, 1), (0, 20), (20, 20), (3, 17), (50, 100), (1, 250)]
)
def test_wilson_matches_statsmodels(successes, n, confidence):
    expected = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    assert wilson_interval(successes, n, confidence) == pytest.approx(expected, abs=1e-12)


def test_wilson_empty_and_invalid():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(-1, 3)
    with pytest.raises(ValueError):
        wilson_interval(1, 3, confidence=1.0)


# ---------------------------------------------------------------- Fisher


def _fisher_by_hand(a: int, b: int, c: int, d: int) -> float:
    """Two-sided Fisher p: sum of hypergeometric probabilities no larger than the observed one."""
    row1, col1, n = a + b, a + c, a + b + c + d

    def prob(x: int) -> float:
        return math.comb(col1, x) * math.comb(n - col1, row1 - x) / math.comb(n, row1)

    observed = prob(a)
    support = range(max(0, row1 + col1 - n), min(row1, col1) + 1)
    return min(1.0, sum(prob(x) for x in support if prob(x) <= observed * (1 + 1e-7)))


def test_fisher_lady_tasting_tea():
    # [[3, 1], [1, 3]]: the famous two-sided p = 34/70.
    assert fisher_exact(3, 4, 1, 4) == pytest.approx(34 / 70, rel=1e-12)


@pytest.mark.parametrize(
    ("a_succ", "a_n", "b_succ", "b_n"), [(9, 20, 2, 20), (0, 10, 5, 12), (7, 7, 3, 9), (5, 30, 5, 30)]
)
def test_fisher_matches_hand_computation(a_succ, a_n, b_succ, b_n):
    expected = _fisher_by_hand(a_succ, a_n - a_succ, b_succ, b_n - b_succ)
    assert fisher_exact(a_succ, a_n, b_succ, b_n) == pytest.approx(expected, rel=1e-9)


def test_fisher_empty_group_is_uninformative():
    assert fisher_exact(0, 0, 3, 10) == 1.0


# ---------------------------------------------------------------- ranking flips


def _counts() -> dict[str, dict[int, tuple[int, int]]]:
    return {
        # full depth 8: A 0.80 > B 0.50 == C 0.50
        "A": {2: (1, 20), 4: (4, 20), 6: (14, 20), 8: (16, 20)},
        "B": {2: (0, 20), 4: (12, 20), 6: (14, 20), 8: (10, 20)},
        "C": {2: (1, 20), 4: (6, 20), 6: (2, 20), 8: (10, 20)},
        "D": {4: (20, 20)},  # no full-depth counts: cannot be ranked
    }


def test_ranking_flips_finds_strict_reversals_only():
    flips = ranking_flips(_counts(), full_layers=8)
    # depth 2: A 0.05 vs B 0.00 and C 0.05 -> no reversal (a tie is not a flip)
    # depth 4: A 0.20 < B 0.60 and A 0.20 < C 0.30 -> two flips; B vs C tie at full depth -> never
    # depth 6: A 0.70 == B 0.70 -> no flip; A 0.70 > C 0.10 -> same order
    assert [(f.layers, f.model_a, f.model_b) for f in flips] == [(4, "A", "B"), (4, "A", "C")]
    a_b = flips[0]
    assert a_b == Flip(
        model_a="A",
        model_b="B",
        layers=4,
        asr_a=0.2,
        asr_b=0.6,
        full_asr_a=0.8,
        full_asr_b=0.5,
        p_value=scipy_fisher_exact([[4, 16], [12, 8]]).pvalue,
    )
    assert flips[1].p_value == pytest.approx(_fisher_by_hand(4, 16, 6, 14), rel=1e-9)


def test_ranking_flips_model_ahead_is_model_a_whatever_the_name_order():
    counts = {"zeta": {4: (2, 10), 8: (9, 10)}, "alpha": {4: (8, 10), 8: (1, 10)}}
    (flip,) = ranking_flips(counts, full_layers=8)
    assert (flip.model_a, flip.model_b) == ("zeta", "alpha")
    assert flip.full_asr_a > flip.full_asr_b and flip.asr_a < flip.asr_b


def test_ranking_flips_with_per_model_full_depth():
    counts = {"small": {4: (1, 10), 6: (9, 10)}, "big": {4: (5, 10), 8: (3, 10)}}
    flips = ranking_flips(counts, full_layers={"small": 6, "big": 8})
    assert [(f.layers, f.model_a, f.model_b) for f in flips] == [(4, "small", "big")]
    assert ranking_flips(counts, full_layers=8) == []  # "small" has no counts at 8 layers


# ---------------------------------------------------------------- sample size and power


def _hand_sample_size(p1: float, p2: float, alpha: float, power: float) -> float:
    z_a, z_b = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    p_bar = (p1 + p2) / 2
    root = z_a * math.sqrt(2 * p_bar * (1 - p_bar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return root**2 / (p1 - p2) ** 2


def test_sample_size_textbook_values():
    # Fleiss (no continuity correction): 0.5 vs 0.3 -> 92.999 -> 93; 0.2 vs 0.1 -> 198.96 -> 199.
    assert sample_size_two_proportions(0.5, 0.3) == 93
    assert sample_size_two_proportions(0.1, 0.2) == 199
    assert _hand_sample_size(0.1, 0.2, 0.05, 0.8) == pytest.approx(198.96, abs=0.01)


@pytest.mark.parametrize(("p1", "p2"), [(0.5, 0.3), (0.9, 0.6), (0.05, 0.2), (0.4, 0.45)])
@pytest.mark.parametrize(("alpha", "power"), [(0.05, 0.8), (0.01, 0.9)])
def test_sample_size_matches_hand_formula_and_statsmodels(p1, p2, alpha, power):
    n = sample_size_two_proportions(p1, p2, alpha, power)
    assert n == math.ceil(_hand_sample_size(p1, p2, alpha, power))
    # statsmodels implements the same pooled-variance formula:
    n_pooled = samplesize_proportions_2indep_onetail(p1 - p2, p2, power, ratio=1, alpha=alpha)
    assert n == math.ceil(n_pooled)


@pytest.mark.parametrize(("p1", "p2"), [(0.5, 0.3), (0.4, 0.45), (0.6, 0.5)])
def test_sample_size_close_to_arcsine_approximation_for_mid_range_rates(p1, p2):
    # NormalIndPower with Cohen's h is a different approximation; it agrees only away from 0 and 1.
    h = proportion_effectsize(p1, p2)
    n_arcsine = NormalIndPower().solve_power(effect_size=abs(h), alpha=0.05, power=0.8, ratio=1.0)
    assert sample_size_two_proportions(p1, p2) == pytest.approx(n_arcsine, rel=0.02)


def test_power_hand_value_and_inverse_of_sample_size():
    # 0.5 vs 0.3, n=93: (0.2*sqrt(93) - 1.959964*sqrt(0.48)) / sqrt(0.46) = 0.84164 -> 0.80001
    z_alpha = NormalDist().inv_cdf(0.975)
    upper = NormalDist().cdf((0.2 * math.sqrt(93) - z_alpha * math.sqrt(0.48)) / math.sqrt(0.46))
    lower = NormalDist().cdf((-0.2 * math.sqrt(93) - z_alpha * math.sqrt(0.48)) / math.sqrt(0.46))
    assert power_two_proportions(0.5, 0.3, 93) == pytest.approx(upper + lower, rel=1e-9)
    assert power_two_proportions(0.5, 0.3, 93) == pytest.approx(0.80001, abs=1e-5)
    for p1, p2 in [(0.5, 0.3), (0.9, 0.6), (0.05, 0.2)]:
        n = sample_size_two_proportions(p1, p2)
        assert power_two_proportions(p1, p2, n) >= 0.8 > power_two_proportions(p1, p2, n - 1)


@pytest.mark.parametrize(
    ("p1", "p2", "n", "alpha"), [(0.5, 0.3, 40, 0.05), (0.05, 0.2, 150, 0.01), (0.7, 0.65, 900, 0.1)]
)
def test_power_matches_statsmodels(p1, p2, n, alpha):
    expected = power_proportions_2indep(p1 - p2, p2, n, ratio=1, alpha=alpha, return_results=False)
    assert power_two_proportions(p1, p2, n, alpha) == pytest.approx(expected, rel=1e-9)


def test_power_edge_cases():
    assert power_two_proportions(0.3, 0.3, 50) == pytest.approx(0.05, rel=1e-9)  # the test's size
    assert power_two_proportions(0.0, 1.0, 1) == 1.0
    with pytest.raises(ValueError):
        sample_size_two_proportions(0.3, 0.3)
    with pytest.raises(ValueError):
        sample_size_two_proportions(0.3, 1.2)


# ---------------------------------------------------------------- agreement


def test_agreement_hand_example():
    # 20 both, 10 a only, 5 b only, 15 neither, plus 3 pairs with a None.
    a = [True] * 20 + [True] * 10 + [False] * 5 + [False] * 15 + [None, True, None]
    b = [True] * 20 + [False] * 10 + [True] * 5 + [False] * 15 + [True, None, None]
    result = agreement(a, b)
    assert result.confusion == ((20, 10), (5, 15))
    assert (result.n_decided, result.n_undecided) == (50, 3)
    # p_o = 35/50 = 0.7, p_e = 0.6*0.5 + 0.4*0.5 = 0.5 -> kappa = 0.2/0.5
    assert result.kappa == pytest.approx(0.4)
    # 15 discordant < 25: exact, 2 * P(Bin(15, 1/2) <= 5) = 2 * 4944 / 32768
    assert result.mcnemar_method == "exact binomial"
    assert result.mcnemar_p == pytest.approx(2 * 4944 / 32768, rel=1e-12)
    assert (result.asr_a, result.asr_b, result.inflation) == (0.6, 0.5, pytest.approx(1.2))
    assert result.observed_agreement == pytest.approx(0.7)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [30, 400])
def test_agreement_matches_sklearn_and_statsmodels(seed, n):
    rng = random.Random(seed)
    a = [rng.choice([True, False, True, None]) for _ in range(n)]
    b = [x if x is not None and rng.random() < 0.7 else rng.choice([True, False, None]) for x in a]
    result = agreement(a, b)
    decided = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    xs, ys = [int(x) for x, _ in decided], [int(y) for _, y in decided]
    assert result.kappa == pytest.approx(cohen_kappa_score(xs, ys), abs=1e-12)
    table = [list(row) for row in result.confusion]
    exact = result.a_only + result.b_only < 25
    expected = sm_mcnemar(table, exact=exact, correction=False).pvalue
    assert result.mcnemar_p == pytest.approx(expected, rel=1e-9)
    assert result.mcnemar_method.startswith("exact" if exact else "chi-square")
    assert result.n_undecided == sum(1 for x, y in zip(a, b, strict=True) if x is None or y is None)


def test_agreement_undefined_quantities():
    only_true = agreement([True, True, None], [True, True, True])
    assert only_true.kappa is None and only_true.mcnemar_p == 1.0
    assert agreement([True, False], [False, False]).inflation is None  # b never says jailbroken
    empty = agreement([None], [True])
    assert (empty.asr_a, empty.kappa, empty.inflation, empty.n_undecided) == (None, None, None, 1)
    with pytest.raises(ValueError):
        agreement([True], [True, False])
