"""The difference of a metric between two experiments, paired by input when they share inputs.

- Same inputs: a paired analysis of the per-input differences (each input's mean over
  its repeats). A 0/1 score with one repeat on both sides gets the exact McNemar test
  (a binomial test on the discordant pairs); anything else the paired t test, or the
  exact sign test when every difference is the same (t is undefined without spread).
- Different inputs: Welch's unequal-variance t test on the per-input means.
- No input changed at all: nothing to test (no p-value), the difference is exactly 0.
- Several metrics compared at once: Holm's step-down adjustment of the p-values.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

from sandbox_sdk.analysis.intervals import DEFAULT_CONFIDENCE, check_confidence
from sandbox_sdk.analysis.numerics import scipy_stats

EXACT_MCNEMAR = "exact-mcnemar"
EXACT_SIGN = "exact-sign"
PAIRED_T = "paired-t"
WELCH_T = "welch-t"
NO_TEST = "none"


@dataclass(frozen=True)
class Difference:
    """``b - a`` with its interval and two-sided p-value (None when it cannot be judged)."""

    difference: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    test: str
    paired: bool


def paired_difference(
    a: Mapping[Hashable, float],
    b: Mapping[Hashable, float],
    *,
    binary_single_repeat: bool,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Difference:
    """The mean of ``b[k] - a[k]`` over the inputs ``k`` both have a value for; ``a`` and
    ``b`` are per-input means. ``binary_single_repeat``: every value is a single 0 or 1."""
    check_confidence(confidence)
    shared = [key for key in a if key in b]
    differences = [b[key] - a[key] for key in shared]
    difference = math.fsum(differences) / len(differences) if differences else 0.0
    if len(shared) < 2:
        return Difference(difference, None, None, None, NO_TEST, paired=True)
    if not any(differences):
        # No input changed: both exact tests discard ties, so there is nothing to test,
        # and a metric that cannot differ must not dilute Holm's correction of the others.
        return Difference(0.0, 0.0, 0.0, None, NO_TEST, paired=True)
    if binary_single_repeat:
        return _exact_mcnemar(differences, confidence)
    if len(set(differences)) == 1:
        return _exact_sign(differences)
    result = scipy_stats().ttest_rel([b[k] for k in shared], [a[k] for k in shared])
    low, high = result.confidence_interval(confidence_level=confidence)
    return Difference(difference, float(low), float(high), float(result.pvalue), PAIRED_T, True)


def unpaired_difference(
    a: Sequence[float], b: Sequence[float], *, confidence: float = DEFAULT_CONFIDENCE
) -> Difference:
    """Welch's t test of ``mean(b) - mean(a)``; ``a`` and ``b`` are per-input means."""
    check_confidence(confidence)
    difference = (math.fsum(b) / len(b) if b else 0.0) - (math.fsum(a) / len(a) if a else 0.0)
    if len(a) < 2 or len(b) < 2 or (len(set(a)) == 1 and len(set(b)) == 1):
        return Difference(difference, None, None, None, NO_TEST, paired=False)
    result = scipy_stats().ttest_ind(b, a, equal_var=False)
    low, high = result.confidence_interval(confidence_level=confidence)
    return Difference(difference, float(low), float(high), float(result.pvalue), WELCH_T, False)


def holm_adjusted(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment: the i-th smallest of m p-values times (m - i + 1),
    made monotone and capped at 1. None stays None and does not count in m."""
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - rank) * p))
        adjusted[index] = running
    return adjusted


def _exact_mcnemar(differences: Sequence[float], confidence: float) -> Difference:
    """McNemar's exact test: among the discordant pairs, b's wins are Binomial(m, ½) when
    there is no difference. The interval is the exact (Clopper-Pearson) interval of the
    share of wins, mapped to the difference of rates given the m discordant pairs."""
    n = len(differences)
    wins = sum(1 for d in differences if d > 0)
    discordant = wins + sum(1 for d in differences if d < 0)
    difference = (2 * wins - discordant) / n
    test = scipy_stats().binomtest(wins, discordant, 0.5)
    share = test.proportion_ci(confidence_level=confidence, method="exact")
    scale = discordant / n
    return Difference(
        difference,
        (2.0 * share.low - 1.0) * scale,
        (2.0 * share.high - 1.0) * scale,
        float(test.pvalue),
        EXACT_MCNEMAR,
        paired=True,
    )


def _exact_sign(differences: Sequence[float]) -> Difference:
    """Every input moved by the same amount: the sign test (all n signs alike has
    probability 2 / 2^n under no difference) judges it; there is no spread for an interval."""
    difference = differences[0]
    n = len(differences)
    wins = n if difference > 0 else 0
    p_value = float(scipy_stats().binomtest(wins, n, 0.5).pvalue)
    return Difference(difference, None, None, p_value, EXACT_SIGN, paired=True)
