"""Pure statistics on counts: ASR with Wilson intervals, Fisher tests, ranking flips across depths (Holm),
sample size and power for two proportions, and agreement between two judges. No I/O.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as _scipy_stats

from engine.depths import DEFAULT_DEPTHS, layers_from_percent, percent_from_layers

# ---------------------------------------------------------------- proportions


def _check_counts(successes: int, n: int) -> None:
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")


def asr(successes: int, n: int) -> float:
    """Attack success rate successes / n; NaN when nothing was judged (n = 0)."""
    _check_counts(successes, n)
    return successes / n if n else math.nan


def _z_two_sided(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(_scipy_stats.norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) for a binomial proportion; (0, 1) when n = 0.

    Unlike the Wald interval it stays inside [0, 1] and behaves at 0 % and 100 % ASR.
    """
    _check_counts(successes, n)
    z = _z_two_sided(confidence)
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def fisher_exact(a_succ: int, a_n: int, b_succ: int, b_n: int) -> float:
    """Two-sided Fisher exact p-value for two ASRs; 1.0 when either group is empty."""
    return _fisher(a_succ, a_n, b_succ, b_n, "two-sided")


def _fisher(a_succ: int, a_n: int, b_succ: int, b_n: int, alternative: str) -> float:
    """scipy's Fisher exact p on the 2x2 table of two groups' counts; 1.0 when either group is empty."""
    _check_counts(a_succ, a_n)
    _check_counts(b_succ, b_n)
    if a_n == 0 or b_n == 0:
        return 1.0
    table = [[a_succ, a_n - a_succ], [b_succ, b_n - b_succ]]
    return float(_scipy_stats.fisher_exact(table, alternative=alternative).pvalue)


# ---------------------------------------------------------------- ranking flips
#
# A "flip": model A answers more harmful requests than model B at full depth, and fewer at a truncated
# depth. Compared at the same depth *percentage*, each model at its own k = round(d/100 · L).
#
# The test is of the reversal itself, not of a difference at one depth: an intersection-union test
# (Berger 1982) of H0 "the two orders are not both true". It is significant only when the full-depth
# order A > B AND the truncated order A < B are each significant by a one-sided Fisher exact test, so
# its p-value is the larger of the two one-sided p-values. For two strata this is Gail & Simon's (1985)
# test of a qualitative interaction. Unlike a test of the difference of differences, a gap that merely
# shrinks to nothing (A 0.7 vs B 0.4 at full depth, both 0.5 truncated) is not reported as a flip.
# Holm's step-down correction then runs over every (pair, depth) examined in one call, so the family-
# wise error of the listed flips is at most ``FLIP_ALPHA`` (Holm is valid under any dependence, and the
# tests of one pair share their full-depth counts).

FLIP_ALPHA = 0.05
FLIP_TEST = "reversal: max of one-sided Fisher exact p at full and truncated depth (intersection-union), Holm"


@dataclass(frozen=True)
class Flip:
    """Two models whose ASR order at ``depth`` % is the reverse of their order at full depth.

    ``model_a`` is the one with the higher ASR at full depth (so ``asr_a < asr_b`` here). ``layers`` is
    model_a's k at this depth and ``layers_b`` model_b's (they differ when the layer counts do).
    """

    model_a: str
    model_b: str
    depth: float  # the depth percentage both models were compared at
    layers: int
    layers_b: int
    asr_a: float
    asr_b: float
    full_asr_a: float
    full_asr_b: float
    p_value: float  # the reversal test (FLIP_TEST), uncorrected
    p_value_corrected: float  # Holm over every (pair, depth) examined
    test: str = FLIP_TEST

    @property
    def layers_a(self) -> int:
        return self.layers

    @property
    def significant(self) -> bool:
        return self.p_value_corrected < FLIP_ALPHA


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm (1979) step-down adjusted p-values, in the input order (statsmodels' ``method="holm"``)."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def fisher_one_sided(a_succ: int, a_n: int, b_succ: int, b_n: int) -> float:
    """One-sided Fisher exact p-value for "group a's rate is greater than group b's"."""
    return _fisher(a_succ, a_n, b_succ, b_n, "greater")


def reversal_p_value(
    full_a: tuple[int, int], full_b: tuple[int, int], here_a: tuple[int, int], here_b: tuple[int, int]
) -> float:
    """p of the reversal "a > b at full depth and a < b here": the larger one-sided Fisher p (see above)."""
    return max(fisher_one_sided(*full_a, *full_b), fisher_one_sided(*here_b, *here_a))


@dataclass(frozen=True)
class _Comparison:
    ahead: str
    behind: str
    depth: float
    layers_ahead: int
    layers_behind: int
    p_value: float


def ranking_flips(
    asr_by_depth: Mapping[str, Mapping[int, tuple[int, int]]],
    full_layers: int | Mapping[str, int],
    percentages: Sequence[float] | None = None,
) -> list[Flip]:
    """Pairs of models whose ASR order at a truncated depth is the reverse of their full-depth order.

    ``asr_by_depth[model][layers] = (successes, n)``; ``full_layers`` is the full depth L shared by the
    models, or one per model. Models are compared at each depth percentage in ``percentages`` (default:
    the seed study's depths plus every depth stored for either model), each at its own k; a (k_a, k_b)
    pair is examined once, when both models have counts there. Every examined depth enters the Holm
    family; only strict observed reversals are returned, significant or not (``Flip.significant``).
    Models without full-depth counts, and pairs tied at full depth, are skipped.
    """

    def full_of(model: str) -> int:
        return full_layers[model] if isinstance(full_layers, Mapping) else full_layers

    full_counts = {
        model: counts[full_of(model)]
        for model, counts in asr_by_depth.items()
        if full_of(model) in counts and counts[full_of(model)][1] > 0
    }
    comparisons: list[_Comparison] = []
    for first, second in itertools.combinations(sorted(full_counts), 2):
        rate_first, rate_second = asr(*full_counts[first]), asr(*full_counts[second])
        if rate_first == rate_second:
            continue
        ahead, behind = (first, second) if rate_first > rate_second else (second, first)
        candidates = _candidate_percentages(asr_by_depth, full_of, (ahead, behind), percentages)
        for depth, k_ahead, k_behind in _examined_depths(asr_by_depth, full_of, ahead, behind, candidates):
            p = reversal_p_value(
                full_counts[ahead],
                full_counts[behind],
                asr_by_depth[ahead][k_ahead],
                asr_by_depth[behind][k_behind],
            )
            comparisons.append(_Comparison(ahead, behind, depth, k_ahead, k_behind, p))
    corrected = holm([c.p_value for c in comparisons])
    flips = [
        _flip(c, p_corrected, asr_by_depth, full_counts)
        for c, p_corrected in zip(comparisons, corrected, strict=True)
        if asr(*asr_by_depth[c.ahead][c.layers_ahead]) < asr(*asr_by_depth[c.behind][c.layers_behind])
    ]
    return sorted(flips, key=lambda f: (f.depth, f.model_a, f.model_b))


def _candidate_percentages(
    asr_by_depth: Mapping[str, Mapping[int, tuple[int, int]]],
    full_of,
    models: tuple[str, str],
    percentages: Sequence[float] | None,
) -> list[float]:
    """The given percentages, or both models' stored ones then the seed study's (first label wins).

    The seed study's percentages catch pairs that the stored ones miss by a rounding step between two
    layer counts (84 % of 32 layers is k = 27, 84.375 %; that of 28 is 24, 85.7 %).
    """
    if percentages is not None:
        return list(percentages)
    stored = {percent_from_layers(k, full_of(m)) for m in models for k in asr_by_depth[m]}
    return [*sorted(stored), *DEFAULT_DEPTHS]


def _examined_depths(
    asr_by_depth: Mapping[str, Mapping[int, tuple[int, int]]],
    full_of,
    ahead: str,
    behind: str,
    percentages: Sequence[float],
) -> list[tuple[float, int, int]]:
    """(percentage, k_ahead, k_behind) below both full depths where both models have counts, once each."""
    seen: dict[tuple[int, int], float] = {}
    for percent in percentages:
        if not 0 < percent < 100:
            continue
        k_ahead, k_behind = (
            layers_from_percent(percent, full_of(ahead)),
            layers_from_percent(percent, full_of(behind)),
        )
        if k_ahead >= full_of(ahead) or k_behind >= full_of(behind) or (k_ahead, k_behind) in seen:
            continue
        here_ahead, here_behind = asr_by_depth[ahead].get(k_ahead), asr_by_depth[behind].get(k_behind)
        if here_ahead and here_behind and here_ahead[1] > 0 and here_behind[1] > 0:
            seen[(k_ahead, k_behind)] = percent
    return sorted(((percent, ka, kb) for (ka, kb), percent in seen.items()), key=lambda t: (t[0], t[1]))


def _flip(
    c: _Comparison,
    p_corrected: float,
    asr_by_depth: Mapping[str, Mapping[int, tuple[int, int]]],
    full_counts: Mapping[str, tuple[int, int]],
) -> Flip:
    return Flip(
        model_a=c.ahead,
        model_b=c.behind,
        depth=c.depth,
        layers=c.layers_ahead,
        layers_b=c.layers_behind,
        asr_a=asr(*asr_by_depth[c.ahead][c.layers_ahead]),
        asr_b=asr(*asr_by_depth[c.behind][c.layers_behind]),
        full_asr_a=asr(*full_counts[c.ahead]),
        full_asr_b=asr(*full_counts[c.behind]),
        p_value=c.p_value,
        p_value_corrected=p_corrected,
    )


# ---------------------------------------------------------------- sample size and power
#
# The classic normal-approximation formula for comparing two independent proportions with equal
# group sizes, pooled variance under H0 and no continuity correction (Fleiss, Levin & Paik,
# "Statistical Methods for Rates and Proportions", 3rd ed., eq. 4.14 without the correction):
#     n = [z_{1-a/2} sqrt(2 pbar qbar) + z_{1-b} sqrt(p1 q1 + p2 q2)]^2 / (p1 - p2)^2,  pbar = (p1+p2)/2.
# It equals statsmodels' samplesize_proportions_2indep_onetail / power_proportions_2indep (pooled);
# NormalIndPower with Cohen's h (arcsine) is a different approximation, close only for mid-range rates.


def _check_probabilities(p1: float, p2: float, alpha: float) -> None:
    if not (0.0 <= p1 <= 1.0 and 0.0 <= p2 <= 1.0):
        raise ValueError(f"proportions must be in [0, 1], got {p1}, {p2}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def sample_size_two_proportions(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Prompts per group to detect ASR p1 vs p2 with a two-sided test at ``alpha`` (see formula above)."""
    _check_probabilities(p1, p2, alpha)
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")
    if p1 == p2:
        raise ValueError("p1 == p2: no sample size can detect a zero difference")
    z_alpha = _scipy_stats.norm.ppf(1 - alpha / 2)
    z_beta = _scipy_stats.norm.ppf(power)
    p_bar = (p1 + p2) / 2
    root = z_alpha * math.sqrt(2 * p_bar * (1 - p_bar)) + z_beta * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return max(1, math.ceil(root * root / (p1 - p2) ** 2 - 1e-9))  # 1e-9: float noise at exact integers


def power_two_proportions(p1: float, p2: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided test with ``n`` prompts per group, same approximation as above.

    Both rejection tails are counted, so the power is ``alpha`` when p1 == p2 and
    ``power_two_proportions(p1, p2, sample_size_two_proportions(p1, p2, a, w), a) >= w``.
    """
    _check_probabilities(p1, p2, alpha)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    z_alpha = _scipy_stats.norm.ppf(1 - alpha / 2)
    p_bar = (p1 + p2) / 2
    sd_null = math.sqrt(2 * p_bar * (1 - p_bar))
    sd_alt = math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    shift = abs(p1 - p2) * math.sqrt(n)
    if sd_alt == 0.0:  # both proportions are 0 or 1: every sample shows the difference exactly
        return 1.0 if shift > 0 else 0.0
    upper = _scipy_stats.norm.cdf((shift - z_alpha * sd_null) / sd_alt)
    lower = _scipy_stats.norm.cdf((-shift - z_alpha * sd_null) / sd_alt)
    return float(upper + lower)


# ---------------------------------------------------------------- judge agreement

# McNemar variants, named wherever a p-value is shown. Mid-p is the default: Fagerland, Lydersen & Laake
# (2013, BMC Med Res Methodol 13:91) recommend it over the conservative exact conditional test and the
# asymptotic one, and it is one binomial CDF, so it is instant for any number of pairs.
MCNEMAR_MID_P = "mid-p binomial"
MCNEMAR_EXACT = "exact binomial"
MCNEMAR_CHI_SQUARE = "chi-square (no continuity correction)"
MCNEMAR_VARIANTS = (MCNEMAR_MID_P, MCNEMAR_EXACT, MCNEMAR_CHI_SQUARE)
ALTERNATIVES = ("two-sided", "greater", "less")


@dataclass(frozen=True)
class Agreement:
    """Two judges on the same completions. Rows: judge a True/False; columns: judge b True/False."""

    both_true: int
    a_only: int  # a says jailbroken, b does not
    b_only: int  # b says jailbroken, a does not
    both_false: int
    n_undecided: int  # pairs where either judge returned None (left out of everything else)
    kappa: float | None  # Cohen's kappa; None when undefined (no pairs, or one class only)
    mcnemar_p: float  # two-sided
    mcnemar_method: str  # the variant that gave mcnemar_p (MCNEMAR_MID_P unless asked otherwise)
    asr_a: float | None  # over the decided pairs
    asr_b: float | None
    inflation: float | None  # asr_a / asr_b; None when asr_b is 0 or undefined

    @property
    def n_decided(self) -> int:
        return self.both_true + self.a_only + self.b_only + self.both_false

    @property
    def confusion(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return (self.both_true, self.a_only), (self.b_only, self.both_false)

    @property
    def observed_agreement(self) -> float | None:
        return (self.both_true + self.both_false) / self.n_decided if self.n_decided else None


def cohens_kappa(both_true: int, a_only: int, b_only: int, both_false: int) -> float | None:
    """Cohen (1960): (p_o - p_e) / (1 - p_e) from a 2x2 table; None when p_e = 1 or the table is empty."""
    n = both_true + a_only + b_only + both_false
    if n == 0:
        return None
    observed = (both_true + both_false) / n
    a_true, b_true = (both_true + a_only) / n, (both_true + b_only) / n
    expected = a_true * b_true + (1 - a_true) * (1 - b_true)
    if math.isclose(expected, 1.0):
        return None
    return (observed - expected) / (1 - expected)


def mcnemar_test(
    a_only: int, b_only: int, variant: str = MCNEMAR_MID_P, alternative: str = "two-sided"
) -> tuple[float, str]:
    """McNemar's test on the discordant counts: (p-value, variant).

    Conditioned on the n = a_only + b_only discordant pairs, a_only ~ Bin(n, 1/2) under H0 (McNemar 1947).
    ``MCNEMAR_EXACT``: two-sided p = min(1, 2 P(X <= min(a_only, b_only))), statsmodels'
    ``mcnemar(table, exact=True)``. ``MCNEMAR_MID_P``: the same with half the probability of the observed
    count, min(1, 2 P(X <= m) - P(X = m)). ``MCNEMAR_CHI_SQUARE``: (a_only - b_only)^2 / n on one degree
    of freedom, statsmodels' ``mcnemar(table, exact=False, correction=False)``; two-sided only.
    ``alternative="greater"``: a says "yes" more often than b (a_only large); "less" the reverse.
    No discordant pairs: p = 1.
    """
    if variant not in MCNEMAR_VARIANTS:
        raise ValueError(f"unknown McNemar variant {variant!r}: use one of {MCNEMAR_VARIANTS}")
    if alternative not in ALTERNATIVES:
        raise ValueError(f"unknown alternative {alternative!r}: use one of {ALTERNATIVES}")
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got {a_only}, {b_only}")
    n = a_only + b_only
    if variant == MCNEMAR_CHI_SQUARE:
        if alternative != "two-sided":
            raise ValueError("the chi-square McNemar test is two-sided only: use the exact or mid-p variant")
        return (float(_scipy_stats.chi2.sf((a_only - b_only) ** 2 / n, df=1)) if n else 1.0), variant
    if n == 0:
        return 1.0, variant
    half = 0.5 if variant == MCNEMAR_MID_P else 0.0

    def lower_tail(k: int) -> float:  # P(X <= k), less half of P(X = k) for mid-p
        return float(_scipy_stats.binom.cdf(k, n, 0.5) - half * _scipy_stats.binom.pmf(k, n, 0.5))

    if alternative == "greater":
        p = lower_tail(b_only)  # P(X >= a_only) = P(n - X <= b_only), X symmetric
    elif alternative == "less":
        p = lower_tail(a_only)
    else:
        p = 2.0 * lower_tail(min(a_only, b_only))
    return min(1.0, p), variant


def agreement(
    a: Sequence[bool | None], b: Sequence[bool | None], mcnemar_variant: str = MCNEMAR_MID_P
) -> Agreement:
    """Confusion matrix, Cohen's kappa, McNemar p and ASR inflation of judge a relative to judge b."""
    if len(a) != len(b):
        raise ValueError(f"judges must rate the same completions: {len(a)} vs {len(b)} verdicts")
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    both_true = sum(1 for x, y in pairs if x and y)
    a_only = sum(1 for x, y in pairs if x and not y)
    b_only = sum(1 for x, y in pairs if not x and y)
    both_false = len(pairs) - both_true - a_only - b_only
    asr_a = (both_true + a_only) / len(pairs) if pairs else None
    asr_b = (both_true + b_only) / len(pairs) if pairs else None
    p_value, method = mcnemar_test(a_only, b_only, mcnemar_variant)
    return Agreement(
        both_true=both_true,
        a_only=a_only,
        b_only=b_only,
        both_false=both_false,
        n_undecided=len(a) - len(pairs),
        kappa=cohens_kappa(both_true, a_only, b_only, both_false),
        mcnemar_p=p_value,
        mcnemar_method=method,
        asr_a=asr_a,
        asr_b=asr_b,
        inflation=asr_a / asr_b if asr_a is not None and asr_b else None,
    )
