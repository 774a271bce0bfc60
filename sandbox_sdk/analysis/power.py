"""How many inputs (and repeats) an experiment needs to detect a difference.

The design assumed is the one ``compare`` analyses: the same inputs run by both
experiments, compared by the paired t test on per-input differences, two-sided.
The variance of one experiment's per-input mean with r repeats is
``between + within / r``: repeats only shrink the part that varies from repeat to
repeat of the same input, which a baseline with repeats measures. The two
experiments' per-input values are assumed uncorrelated, which overstates the
variance of the differences (and so the inputs needed) when they are positively
correlated, as they usually are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandbox_sdk.analysis.clusters import Clusters
from sandbox_sdk.analysis.numerics import scipy_stats

if TYPE_CHECKING:
    from sandbox_sdk.models.results import ExperimentResults

_MAX_INPUTS = 10_000_000


class PowerInputError(ValueError):
    """The arguments do not determine a power calculation."""


@dataclass(frozen=True)
class PowerPlan:
    """The inputs needed per experiment to detect ``difference`` with the given power.

    Attributes:
        inputs: inputs each experiment must run (the same inputs in both).
        repeats: repeats per input the plan assumes.
        difference: the smallest difference b - a to detect.
        alpha: the two-sided significance level.
        power: the probability of detecting ``difference`` when it is real.
        method: the test and the assumptions behind the number.
        assumed_rate: the baseline rate of a 0/1 score, when the metric is one.
        assumed_stddev: the per-sample standard deviation assumed, for any other metric.
        within_share: the share of the variance that varies between repeats of one
            input (0 when unknown: then repeats do not reduce the inputs needed).
    """

    inputs: int
    repeats: int
    difference: float
    alpha: float
    power: float
    method: str
    assumed_rate: float | None
    assumed_stddev: float | None
    within_share: float = 0.0

    def describe(self) -> str:
        """One paragraph saying what to run and why."""
        if self.assumed_rate is not None:
            assumed = f"a baseline rate of {self.assumed_rate:.3g}"
        else:
            assumed = f"a standard deviation of {self.assumed_stddev:.3g}"
        repeat_word = "repeat" if self.repeats == 1 else "repeats"
        return (
            f"{self.inputs} inputs x {self.repeats} {repeat_word} per experiment detect a "
            f"difference of {self.difference:+.3g} with power {self.power:.0%} at "
            f"alpha {self.alpha:g} (two-sided), assuming {assumed}; {self.method}."
        )


def sample_size(
    *,
    difference: float,
    baseline: ExperimentResults | None = None,
    metric: str | None = None,
    rate: float | None = None,
    stddev: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    repeats: int = 1,
) -> PowerPlan:
    """The inputs needed to detect ``difference`` in a metric at ``alpha`` with ``power``.

    Give either a ``baseline`` experiment and the ``metric`` to plan for (its rate when
    the metric is a 0/1 score, else its spread; with repeats, how much of the spread
    repeats average away), or an explicit ``rate`` (0/1 scores) or ``stddev``.
    """
    _check(difference=difference, alpha=alpha, power=power, repeats=repeats)
    within_share = 0.0
    if baseline is not None:
        if metric is None:
            raise PowerInputError("a baseline needs the metric to plan for, e.g. metric='exact'")
        clusters = _baseline_clusters(baseline, metric)
        within_share = _within_share(clusters)
        if clusters.is_binary():
            rate = clusters.mean
        else:
            stddev = clusters.sample_stddev()
    elif metric is not None:
        raise PowerInputError("metric names a baseline's metric: give baseline= too")
    if rate is not None:
        if not 0.0 <= rate <= 1.0:
            raise PowerInputError(f"rate must be between 0 and 1, got {rate}")
        other = min(1.0, max(0.0, rate + difference))
        variance_a, variance_b = rate * (1.0 - rate), other * (1.0 - other)
        kind = "0/1 score"
    elif stddev is not None:
        if stddev <= 0:
            raise PowerInputError(f"stddev must be positive, got {stddev}")
        variance_a = variance_b = stddev * stddev
        kind = "continuous metric"
    else:
        raise PowerInputError("give a baseline and metric, a rate (0/1 scores) or a stddev")
    shrink = 1.0 - within_share + within_share / repeats
    variance = (variance_a + variance_b) * shrink
    if variance == 0.0:
        raise PowerInputError(f"a rate of {rate} with a difference of {difference} has no spread")
    inputs = _inputs_for(variance, difference, alpha, power)
    repeats_note = (
        f"{within_share:.0%} of the variance is between repeats of an input (from the baseline)"
        if within_share
        else "repeats assumed not to reduce the variance (no within-input spread known)"
    )
    return PowerPlan(
        inputs=inputs,
        repeats=repeats,
        difference=difference,
        alpha=alpha,
        power=power,
        method=f"paired t test on per-input differences of a {kind}, experiments assumed "
        f"uncorrelated per input; {repeats_note}",
        assumed_rate=rate,
        assumed_stddev=None if rate is not None else stddev,
        within_share=within_share,
    )


def _inputs_for(variance: float, difference: float, alpha: float, power: float) -> int:
    """The smallest n with n >= (t(1-alpha/2, n-1) + t(power, n-1))^2 * variance / difference^2.

    The right side falls as n grows and is never below its normal-quantile value, so
    counting up from that value finds the smallest n."""
    stats = scipy_stats()
    scale = variance / difference**2

    def t_required(n: int) -> float:
        return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) ** 2 * scale)

    normal = float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) ** 2 * scale)
    n = max(2, math.ceil(normal))
    while n < _MAX_INPUTS and t_required(n) > n:
        n += 1
    return n


def _baseline_clusters(baseline: ExperimentResults, metric: str) -> Clusters:
    clusters = Clusters.of(
        (sample.input_index, value)
        for sample in baseline.samples
        if (value := sample.measurement(metric)) is not None
    )
    if clusters.count < 2:
        known = [*baseline.score_names()]
        raise PowerInputError(
            f"the baseline has fewer than two values of {metric!r} (scores: {known})"
        )
    return clusters


def _within_share(clusters: Clusters) -> float:
    """The pooled within-input variance's share of the total (one-way ANOVA), 0 when no
    input has two repeats."""
    within_squares = 0.0
    within_df = 0
    for group in clusters.groups:
        if len(group) > 1:
            center = math.fsum(group) / len(group)
            within_squares += math.fsum((v - center) ** 2 for v in group)
            within_df += len(group) - 1
    total = clusters.sample_stddev()
    if within_df == 0 or not total:
        return 0.0
    return min(1.0, (within_squares / within_df) / total**2)


def _check(*, difference: float, alpha: float, power: float, repeats: int) -> None:
    if difference == 0 or not math.isfinite(difference):
        raise PowerInputError("difference must be a non-zero number")
    if not 0.0 < alpha < 1.0:
        raise PowerInputError(f"alpha must be between 0 and 1, got {alpha}")
    if not 0.0 < power < 1.0:
        raise PowerInputError(f"power must be between 0 and 1, got {power}")
    if repeats < 1:
        raise PowerInputError(f"repeats must be at least 1, got {repeats}")
