"""Small-sample statistics for experiment metrics, with no third-party dependencies.

The server summarises each metric of an experiment with :func:`summarize`
(mean, sample standard deviation, confidence interval of the mean from
Student's t distribution); clients compare two experiments with
:func:`compare` (Welch's unequal-variance t interval of the difference).

Student's t quantiles come from the regularized incomplete beta function,
evaluated with a continued fraction and inverted by bisection, so any
confidence level and fractional degrees of freedom (as Welch's test needs)
are exact to about 1e-10.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_CONFIDENCE = 0.95
_CONTINUED_FRACTION_ITERATIONS = 300
_CONTINUED_FRACTION_EPSILON = 3e-16
_TINY = 1e-300
_BISECTION_STEPS = 200


@dataclass(frozen=True)
class Summary:
    """A sample summarised: its size, mean, spread and the confidence interval of the mean.

    With fewer than two values the spread is unknown: ``stddev`` is 0 and the
    interval collapses to the mean.
    """

    count: int
    mean: float
    stddev: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Comparison:
    """Sample ``b`` compared with sample ``a`` by Welch's t interval.

    ``difference`` is ``mean(b) - mean(a)``; ``ci_low`` and ``ci_high`` bound
    it at the requested confidence. ``significant`` is true when that interval
    excludes zero, that is when the difference is beyond noise.
    """

    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    degrees_of_freedom: float
    confidence: float
    significant: bool


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean; raises ``ValueError`` for an empty sample."""
    if not values:
        raise ValueError("mean of an empty sample")
    return math.fsum(values) / len(values)


def stddev(values: Sequence[float]) -> float:
    """The sample standard deviation (divisor n - 1); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    center = mean(values)
    return math.sqrt(math.fsum((v - center) ** 2 for v in values) / (len(values) - 1))


def t_quantile(probability: float, degrees_of_freedom: float) -> float:
    """The ``probability`` quantile of Student's t distribution.

    ``degrees_of_freedom`` may be fractional; ``t_quantile(0.975, 9)`` is
    about 2.262.
    """
    if not 0.0 < probability < 1.0:
        raise ValueError("probability must be strictly between 0 and 1")
    if degrees_of_freedom <= 0:
        raise ValueError("degrees of freedom must be positive")
    if probability == 0.5:
        return 0.0
    if probability < 0.5:
        return -t_quantile(1.0 - probability, degrees_of_freedom)
    high = 1.0
    while t_cdf(high, degrees_of_freedom) < probability:
        high *= 2.0
    low = 0.0
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2.0
        if t_cdf(middle, degrees_of_freedom) < probability:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


def t_cdf(t: float, degrees_of_freedom: float) -> float:
    """The cumulative distribution function of Student's t distribution."""
    x = degrees_of_freedom / (degrees_of_freedom + t * t)
    tail = 0.5 * regularized_incomplete_beta(x, degrees_of_freedom / 2.0, 0.5)
    return 1.0 - tail if t >= 0 else tail


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The continued fraction converges fast only on this side of the mean.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(x, a, b) / a
    return 1.0 - front * _beta_continued_fraction(1.0 - x, b, a) / b


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of the incomplete beta function, by Lentz's method."""
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, _CONTINUED_FRACTION_ITERATIONS + 1):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            result *= c * d
        if abs(c * d - 1.0) < _CONTINUED_FRACTION_EPSILON:
            break
    return result


def confidence_interval(
    values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float]:
    """The two-sided confidence interval of the mean, from Student's t.

    With fewer than two values the interval is the mean itself.
    """
    _check_confidence(confidence)
    center = mean(values)
    if len(values) < 2:
        return center, center
    margin = _critical_value(confidence, len(values) - 1) * stddev(values) / math.sqrt(len(values))
    return center - margin, center + margin


def summarize(values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> Summary:
    """Count, mean, sample standard deviation and confidence interval of ``values``."""
    low, high = confidence_interval(values, confidence)
    return Summary(
        count=len(values), mean=mean(values), stddev=stddev(values), ci_low=low, ci_high=high
    )


def compare(
    a: Sequence[float], b: Sequence[float], confidence: float = DEFAULT_CONFIDENCE
) -> Comparison:
    """Compares sample ``b`` with sample ``a`` (Welch's t interval of ``mean(b) - mean(a)``).

    Each sample needs at least two values, since the spread of a single value
    is unknown. When both samples have no spread at all, any difference of
    the means is significant and its interval is the difference itself.
    """
    _check_confidence(confidence)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("compare needs at least two values in each sample")
    mean_a, mean_b = mean(a), mean(b)
    difference = mean_b - mean_a
    variance_a = stddev(a) ** 2 / len(a)
    variance_b = stddev(b) ** 2 / len(b)
    standard_error = math.sqrt(variance_a + variance_b)
    if standard_error == 0.0:
        return Comparison(
            mean_a=mean_a,
            mean_b=mean_b,
            difference=difference,
            ci_low=difference,
            ci_high=difference,
            degrees_of_freedom=math.inf,
            confidence=confidence,
            significant=difference != 0.0,
        )
    degrees_of_freedom = (variance_a + variance_b) ** 2 / (
        variance_a**2 / (len(a) - 1) + variance_b**2 / (len(b) - 1)
    )
    margin = _critical_value(confidence, degrees_of_freedom) * standard_error
    low, high = difference - margin, difference + margin
    return Comparison(
        mean_a=mean_a,
        mean_b=mean_b,
        difference=difference,
        ci_low=low,
        ci_high=high,
        degrees_of_freedom=degrees_of_freedom,
        confidence=confidence,
        significant=low > 0.0 or high < 0.0,
    )


def _critical_value(confidence: float, degrees_of_freedom: float) -> float:
    return t_quantile(0.5 + confidence / 2.0, degrees_of_freedom)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be strictly between 0 and 1, for example 0.95")
