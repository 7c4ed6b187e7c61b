"""Pure statistics on counts: ASR with Wilson intervals, Fisher tests, ranking flips across depths,
sample size and power for two proportions, and agreement between two judges. No I/O.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as _scipy_stats

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
    _check_counts(a_succ, a_n)
    _check_counts(b_succ, b_n)
    if a_n == 0 or b_n == 0:
        return 1.0
    table = [[a_succ, a_n - a_succ], [b_succ, b_n - b_succ]]
    return float(_scipy_stats.fisher_exact(table, alternative="two-sided").pvalue)


# ---------------------------------------------------------------- ranking flips


@dataclass(frozen=True)
class Flip:
    """Two models whose ASR order at ``layers`` is the reverse of their order at full depth.

    ``model_a`` is the one with the higher ASR at full depth (so ``asr_a < asr_b`` here).
    """

    model_a: str
    model_b: str
    layers: int
    asr_a: float
    asr_b: float
    full_asr_a: float
    full_asr_b: float
    p_value: float  # Fisher exact, two-sided, of the difference at ``layers``


def ranking_flips(
    asr_by_depth: Mapping[str, Mapping[int, tuple[int, int]]], full_layers: int | Mapping[str, int]
) -> list[Flip]:
    """Pairs of models whose ASR order reverses at a truncated depth compared with full depth.

    ``asr_by_depth[model][layers] = (successes, n)``. ``full_layers`` is the full depth L shared by
    the models (or one per model). Depths are compared at equal ``layers``; a strict reversal is
    needed (ties at either depth are not flips) and models with no full-depth counts are skipped.
    """
    full_rates: dict[str, float] = {}
    for model, counts in asr_by_depth.items():
        full = full_layers[model] if isinstance(full_layers, Mapping) else full_layers
        if full in counts and counts[full][1] > 0:
            full_rates[model] = asr(*counts[full])
    flips: list[Flip] = []
    for first, second in itertools.combinations(sorted(full_rates), 2):
        if full_rates[first] == full_rates[second]:
            continue
        ahead, behind = (first, second) if full_rates[first] > full_rates[second] else (second, first)
        flips.extend(_flips_of_pair(asr_by_depth, full_layers, ahead, behind, full_rates))
    return sorted(flips, key=lambda f: (f.layers, f.model_a, f.model_b))


def _flips_of_pair(
    asr_by_depth: Mapping[str, Mapping[int, tuple[int, int]]],
    full_layers: int | Mapping[str, int],
    ahead: str,
    behind: str,
    full_rates: Mapping[str, float],
) -> list[Flip]:
    def full_of(model: str) -> int:
        return full_layers[model] if isinstance(full_layers, Mapping) else full_layers

    common = set(asr_by_depth[ahead]) & set(asr_by_depth[behind])
    flips = []
    for layers in sorted(common):
        if layers >= min(full_of(ahead), full_of(behind)):
            continue
        (a_succ, a_n), (b_succ, b_n) = asr_by_depth[ahead][layers], asr_by_depth[behind][layers]
        if a_n == 0 or b_n == 0 or asr(a_succ, a_n) >= asr(b_succ, b_n):
            continue
        flips.append(
            Flip(
                model_a=ahead,
                model_b=behind,
                layers=layers,
                asr_a=asr(a_succ, a_n),
                asr_b=asr(b_succ, b_n),
                full_asr_a=full_rates[ahead],
                full_asr_b=full_rates[behind],
                p_value=fisher_exact(a_succ, a_n, b_succ, b_n),
            )
        )
    return flips


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

MCNEMAR_EXACT_BELOW = 25


@dataclass(frozen=True)
class Agreement:
    """Two judges on the same completions. Rows: judge a True/False; columns: judge b True/False."""

    both_true: int
    a_only: int  # a says jailbroken, b does not
    b_only: int  # b says jailbroken, a does not
    both_false: int
    n_undecided: int  # pairs where either judge returned None (left out of everything else)
    kappa: float | None  # Cohen's kappa; None when undefined (no pairs, or one class only)
    mcnemar_p: float
    mcnemar_method: str
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


def mcnemar_test(a_only: int, b_only: int) -> tuple[float, str]:
    """McNemar's test on the discordant counts: (p-value, method).

    Exact conditional binomial test (McNemar 1947's test conditioned on the discordant pairs) when
    a_only + b_only < 25, the common rule of thumb below which the chi-square approximation is poor:
    p = min(1, 2 P(X <= min(a_only, b_only))), X ~ Bin(a_only + b_only, 1/2), the same as statsmodels'
    ``mcnemar(table, exact=True)``. From 25 discordant pairs on, the asymptotic chi-square test
    (a_only - b_only)^2 / (a_only + b_only) without continuity correction, which Fagerland, Lydersen &
    Laake (2013, BMC Med Res Methodol 13:91) recommend over the corrected one; statsmodels'
    ``mcnemar(table, exact=False, correction=False)``.
    """
    discordant = a_only + b_only
    if discordant < MCNEMAR_EXACT_BELOW:
        p = 2.0 * _scipy_stats.binom.cdf(min(a_only, b_only), discordant, 0.5) if discordant else 1.0
        return float(min(1.0, p)), "exact binomial"
    statistic = (a_only - b_only) ** 2 / discordant
    return float(_scipy_stats.chi2.sf(statistic, df=1)), "chi-square (no continuity correction)"


def agreement(a: Sequence[bool | None], b: Sequence[bool | None]) -> Agreement:
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
    p_value, method = mcnemar_test(a_only, b_only)
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
