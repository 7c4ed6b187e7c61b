"""engine.stats against hand computations, scipy, statsmodels and scikit-learn."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import numpy as np
import pytest
from scipy.stats import binom, binomtest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    power_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    samplesize_proportions_2indep_onetail,
)

from engine.depths import default_layers
from engine.stats import (
    FLIP_ALPHA,
    FLIP_TEST,
    MCNEMAR_CHI_SQUARE,
    MCNEMAR_EXACT,
    MCNEMAR_MID_P,
    Flip,
    agreement,
    asr,
    fisher_exact,
    holm,
    mcnemar_test,
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


def _one_sided_fisher(a_succ: int, a_n: int, b_succ: int, b_n: int) -> float:
    """P(A >= a_succ) with A hypergeometric given the margins: a's rate greater than b's, by hand."""
    total, successes = a_n + b_n, a_succ + b_succ
    support = range(a_succ, min(a_n, successes) + 1)
    return sum(math.comb(successes, x) * math.comb(total - successes, a_n - x) for x in support) / math.comb(
        total, a_n
    )


def _counts() -> dict[str, dict[int, tuple[int, int]]]:
    return {
        # full depth 8: A 0.80 > B 0.50 == C 0.50
        "A": {2: (1, 20), 4: (4, 20), 6: (14, 20), 8: (16, 20)},
        "B": {2: (0, 20), 4: (12, 20), 6: (14, 20), 8: (10, 20)},
        "C": {2: (1, 20), 4: (6, 20), 6: (2, 20), 8: (10, 20)},
        "D": {4: (20, 20)},  # no full-depth counts: cannot be ranked
    }


def test_holm_matches_statsmodels():
    rng = random.Random(3)
    for m in (1, 2, 6, 20):
        ps = [rng.random() ** 3 for _ in range(m)]
        assert holm(ps) == pytest.approx(list(multipletests(ps, method="holm")[1]), abs=1e-12)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3·0.01, max(2·0.03, ·), 0.04


def test_ranking_flips_finds_strict_reversals_with_the_reversal_test_and_holm():
    flips = ranking_flips(_counts(), full_layers=8)
    # depth 2 (25 %): A 0.05 vs B 0.00 and C 0.05 -> no reversal (a tie is not a flip)
    # depth 4 (50 %): A 0.20 < B 0.60 and A 0.20 < C 0.30 -> two reversals; B vs C tie at full -> never
    # depth 6 (75 %): A 0.70 == B 0.70 -> no flip; A 0.70 > C 0.10 -> same order
    assert [(f.depth, f.layers, f.model_a, f.model_b) for f in flips] == [
        (50, 4, "A", "B"),
        (50, 4, "A", "C"),
    ]
    a_b, a_c = flips
    # reversal p = the larger one-sided Fisher p: A > B at full depth, B > A at 4 layers
    p_ab = max(_one_sided_fisher(16, 20, 10, 20), _one_sided_fisher(12, 20, 4, 20))
    p_ac = max(_one_sided_fisher(16, 20, 10, 20), _one_sided_fisher(6, 20, 4, 20))
    assert a_b.p_value == pytest.approx(p_ab, rel=1e-9)
    assert a_c.p_value == pytest.approx(p_ac, rel=1e-9)
    # Holm family: pairs A-B and A-C, each at 2, 4 and 6 layers (25, 50, 75 %) -> m = 6
    every_p = [
        max(_one_sided_fisher(16, 20, 10, 20), _one_sided_fisher(*_counts()[other][k], *_counts()["A"][k]))
        for other in ("B", "C")
        for k in (2, 4, 6)
    ]
    adjusted = multipletests(every_p, method="holm")[1]
    assert a_b.p_value_corrected == pytest.approx(adjusted[1], rel=1e-9)
    assert a_c.p_value_corrected == pytest.approx(adjusted[4], rel=1e-9)
    assert (a_b.layers_a, a_b.layers_b, a_b.asr_a, a_b.asr_b, a_b.full_asr_a, a_b.full_asr_b) == (
        4, 4, 0.2, 0.6, 0.8, 0.5
    )  # fmt: skip
    assert a_b.test == FLIP_TEST and a_b.significant == (a_b.p_value_corrected < FLIP_ALPHA)


def test_ranking_flips_model_ahead_is_model_a_whatever_the_name_order():
    counts = {"zeta": {4: (2, 10), 8: (9, 10)}, "alpha": {4: (8, 10), 8: (1, 10)}}
    (flip,) = ranking_flips(counts, full_layers=8)
    assert (flip.model_a, flip.model_b) == ("zeta", "alpha")
    assert flip.full_asr_a > flip.full_asr_b and flip.asr_a < flip.asr_b
    assert flip.p_value == pytest.approx(
        max(_one_sided_fisher(9, 10, 1, 10), _one_sided_fisher(8, 10, 2, 10))
    )
    assert flip.p_value_corrected == flip.p_value  # one depth examined: Holm changes nothing


def test_ranking_flips_pair_models_at_the_same_depth_percentage():
    # 32 vs 28 layers: 50 % is k = 16 vs k = 14, 84 % is k = 27 vs k = round(23.52) = 24.
    counts = {
        "big": {16: (20, 100), 27: (70, 100), 32: (80, 100)},
        "small": {14: (75, 100), 16: (10, 100), 24: (60, 100), 28: (30, 100)},
    }
    flips = ranking_flips(counts, full_layers={"big": 32, "small": 28})
    assert [(f.depth, f.layers_a, f.layers_b) for f in flips] == [(50, 16, 14)]
    # the old pairing by equal layer count (16 vs 16: 0.20 vs 0.10) would have seen no flip here
    assert flips[0].significant
    assert ranking_flips(counts, full_layers=32) == []  # "small" has no counts at 32 layers


def test_ranking_flips_examines_a_depth_pair_once_and_only_where_both_have_counts():
    counts = {"a": {2: (1, 10), 3: (1, 10), 4: (9, 10)}, "b": {2: (9, 10), 4: (1, 10)}}
    # 50 % -> k = 2 for both; 69, 78, 84 % -> k = 3 (no counts for b); 88 % and up -> full depth
    (flip,) = ranking_flips(counts, full_layers=4)
    assert (flip.depth, flip.layers) == (50, 2) and flip.p_value_corrected == flip.p_value
    (given,) = ranking_flips(counts, full_layers=4, percentages=[50, 50.0, 55])  # 55 % -> k = 2 again
    assert given.depth == 50 and given.p_value_corrected == given.p_value


def _simulated_flips(rng, rates_a, rates_b, n=100, n_layers=32) -> list[Flip]:
    """One simulated sweep at the seed study's seven depths; rates_x[i] is the true ASR at depth i."""
    ks = default_layers(n_layers)
    counts = {
        "a": {k: (int(rng.binomial(n, p)), n) for k, p in zip(ks, rates_a, strict=True)},
        "b": {k: (int(rng.binomial(n, p)), n) for k, p in zip(ks, rates_b, strict=True)},
    }
    return ranking_flips(counts, full_layers=n_layers)


RUNS = 1000


def test_ranking_flips_equal_true_rates_give_at_most_five_percent_corrected_false_flips():
    rng = np.random.default_rng(2024)
    assert len(default_layers(32)) == 7
    found = [_simulated_flips(rng, [0.5] * 7, [0.5] * 7) for _ in range(RUNS)]
    observed = sum(1 for flips in found if flips) / RUNS
    false_flips = sum(1 for flips in found if any(f.p_value_corrected < 0.05 for f in flips)) / RUNS
    uncorrected = sum(1 for flips in found if any(f.p_value < 0.05 for f in flips)) / RUNS
    assert observed > 0.5  # the naive finder's "flips": some depth reverses the order most of the time
    assert false_flips <= 0.05 and uncorrected <= 0.05


def test_a_gap_that_only_shrinks_is_not_a_flip():
    # a ahead 0.7 vs 0.4 at full depth, both 0.5 when truncated: a difference-of-differences test would
    # call half the observed reversals significant; the reversal test must stay at its level.
    rng = np.random.default_rng(7)
    found = [_simulated_flips(rng, [0.5] * 6 + [0.7], [0.5] * 6 + [0.4]) for _ in range(RUNS)]
    assert sum(1 for flips in found if flips) / len(found) > 0.5
    assert sum(1 for flips in found if any(f.significant for f in flips)) / len(found) <= 0.05


def test_ranking_flips_find_a_real_reversal():
    # a ahead 0.7 vs 0.4 at full depth, behind 0.3 vs 0.6 at 50 %, equal elsewhere: power about 0.93
    rng = np.random.default_rng(11)
    found = [_simulated_flips(rng, [0.3] + [0.5] * 5 + [0.7], [0.6] + [0.5] * 5 + [0.4]) for _ in range(200)]
    hits = sum(1 for flips in found if any(f.significant and f.depth == 50 for f in flips))
    assert hits / len(found) >= 0.85
    assert sum(1 for flips in found for f in flips if f.significant and f.depth != 50) <= 0.05 * len(found)


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


# Fagerland, Lydersen & Laake (2013), airway hyper-responsiveness example: 1 vs 7 discordant pairs,
# exact conditional p = 0.070, mid-p = 0.039, asymptotic (uncorrected) p = 0.034.
@pytest.mark.parametrize(
    ("variant", "expected"),
    [(MCNEMAR_EXACT, 18 / 256), (MCNEMAR_MID_P, 10 / 256), (MCNEMAR_CHI_SQUARE, 0.033895)],
)
def test_mcnemar_published_example(variant, expected):
    p, name = mcnemar_test(1, 7, variant)
    assert name == variant
    assert p == pytest.approx(expected, rel=1e-4)
    assert mcnemar_test(7, 1, variant)[0] == p


@pytest.mark.parametrize(("a_only", "b_only"), [(0, 1), (3, 9), (12, 12), (40, 25), (180, 230), (0, 0)])
def test_mcnemar_variants_match_statsmodels_and_scipy(a_only, b_only):
    table = [[7, a_only], [b_only, 11]]
    exact, _ = mcnemar_test(a_only, b_only, MCNEMAR_EXACT)
    assert exact == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-9)
    n, low = a_only + b_only, min(a_only, b_only)
    mid = 1.0 if a_only == b_only else exact - binom.pmf(low, n, 0.5)  # mid-p: exact less P(X = observed)
    assert mcnemar_test(a_only, b_only)[0] == pytest.approx(mid, rel=1e-9)
    if n:
        expected = sm_mcnemar(table, exact=False, correction=False).pvalue
        assert mcnemar_test(a_only, b_only, MCNEMAR_CHI_SQUARE)[0] == pytest.approx(expected, rel=1e-9)
        for alternative in ("greater", "less"):
            one_sided = binomtest(a_only, n, 0.5, alternative=alternative).pvalue
            assert mcnemar_test(a_only, b_only, MCNEMAR_EXACT, alternative)[0] == pytest.approx(one_sided)
            half_point = 0.5 * binom.pmf(a_only, n, 0.5)
            mid_one = mcnemar_test(a_only, b_only, MCNEMAR_MID_P, alternative)[0]
            assert mid_one == pytest.approx(one_sided - half_point)


def test_mcnemar_rejects_unknown_variants_and_one_sided_chi_square():
    with pytest.raises(ValueError, match="variant"):
        mcnemar_test(1, 2, "exact")
    with pytest.raises(ValueError, match="two-sided only"):
        mcnemar_test(1, 2, MCNEMAR_CHI_SQUARE, "greater")
    with pytest.raises(ValueError, match="alternative"):
        mcnemar_test(1, 2, MCNEMAR_EXACT, "larger")


def test_agreement_hand_example():
    # 20 both, 10 a only, 5 b only, 15 neither, plus 3 pairs with a None.
    a = [True] * 20 + [True] * 10 + [False] * 5 + [False] * 15 + [None, True, None]
    b = [True] * 20 + [False] * 10 + [True] * 5 + [False] * 15 + [True, None, None]
    result = agreement(a, b)
    assert result.confusion == ((20, 10), (5, 15))
    assert (result.n_decided, result.n_undecided) == (50, 3)
    # p_o = 35/50 = 0.7, p_e = 0.6*0.5 + 0.4*0.5 = 0.5 -> kappa = 0.2/0.5
    assert result.kappa == pytest.approx(0.4)
    # mid-p by default: 2 * P(Bin(15, 1/2) <= 5) - P(Bin(15, 1/2) = 5) = (2 * 4944 - 3003) / 32768
    assert result.mcnemar_method == MCNEMAR_MID_P
    assert result.mcnemar_p == pytest.approx((2 * 4944 - 3003) / 32768, rel=1e-12)
    exact = agreement(a, b, mcnemar_variant=MCNEMAR_EXACT)
    assert (exact.mcnemar_method, exact.mcnemar_p) == (
        MCNEMAR_EXACT,
        pytest.approx(2 * 4944 / 32768, rel=1e-12),
    )
    assert (result.asr_a, result.asr_b, result.inflation) == (0.6, 0.5, pytest.approx(1.2))
    assert result.observed_agreement == pytest.approx(0.7)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [30, 400])
def test_agreement_matches_sklearn_and_statsmodels(seed, n):
    rng = random.Random(seed)
    a = [rng.choice([True, False, True, None]) for _ in range(n)]
    b = [x if x is not None and rng.random() < 0.7 else rng.choice([True, False, None]) for x in a]
    result = agreement(a, b, mcnemar_variant=MCNEMAR_EXACT)
    decided = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    xs, ys = [int(x) for x, _ in decided], [int(y) for _, y in decided]
    assert result.kappa == pytest.approx(cohen_kappa_score(xs, ys), abs=1e-12)
    table = [list(row) for row in result.confusion]
    assert result.mcnemar_p == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-9)
    assert result.mcnemar_method == MCNEMAR_EXACT
    assert result.n_undecided == sum(1 for x, y in zip(a, b, strict=True) if x is None or y is None)


def test_agreement_undefined_quantities():
    only_true = agreement([True, True, None], [True, True, True])
    assert only_true.kappa is None and only_true.mcnemar_p == 1.0
    assert agreement([True, False], [False, False]).inflation is None  # b never says jailbroken
    empty = agreement([None], [True])
    assert (empty.asr_a, empty.kappa, empty.inflation, empty.n_undecided) == (None, None, None, 1)
    with pytest.raises(ValueError):
        agreement([True], [True, False])
