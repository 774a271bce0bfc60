"""Each metric's mean with its standard error and confidence interval, chosen by its kind.

- A 0/1 score gets the Wilson score interval of its rate, which never leaves [0, 1]
  and is not degenerate at 0 of n or n of n. With repeats the sample size is the
  effective one, n divided by the design effect of the clusters (Kish).
- Any other metric gets Student's t interval of the mean with the cluster-robust
  standard error and k - 1 degrees of freedom for k inputs.
- A metric that cannot be negative (token counts, latencies, rates of tokens) whose
  t interval would reach below zero gets a percentile bootstrap that resamples inputs
  with their repeats, from a fixed seed so the same samples give the same interval.
- Fewer than two inputs: no interval at all.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Iterable

from sandbox_sdk.analysis.clusters import Clusters
from sandbox_sdk.analysis.numerics import numpy, scipy_stats
from sandbox_sdk.models.results import AggregateMetric, IntervalMethod

DEFAULT_CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 4000
# Fixed so that the server's interval for the same samples is the same on every read.
BOOTSTRAP_SEED = 2411_00640
_BOOTSTRAP_CHUNK_CELLS = 2_000_000


def summarize_metric(
    name: str,
    keyed_values: Iterable[tuple[Hashable, float]],
    *,
    failed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> AggregateMetric:
    """The aggregate of one metric from ``(input key, value)`` pairs; ``failed`` counts the
    samples whose scorer failed for it (they have no value)."""
    check_confidence(confidence)
    clusters = Clusters.of(keyed_values)
    low, high, method = interval(clusters, confidence)
    return AggregateMetric(
        name=name,
        count=clusters.count,
        mean=clusters.mean,
        stddev=clusters.sample_stddev(),
        ci_low=low,
        ci_high=high,
        standard_error=clusters.standard_error(),
        interval_method=method,
        confidence=confidence,
        inputs=clusters.inputs,
        repeats=clusters.repeats,
        failed=failed,
    )


def interval(
    clusters: Clusters, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float | None, float | None, IntervalMethod]:
    """The interval of the mean and how it was made (see the module's docstring)."""
    standard_error = clusters.standard_error()
    if standard_error is None:
        return None, None, IntervalMethod.NONE
    if clusters.is_binary():
        low, high = wilson_interval(
            clusters.mean, effective_sample_size(clusters), confidence=confidence
        )
        return low, high, IntervalMethod.WILSON
    low, high = t_interval(clusters.mean, standard_error, clusters.inputs - 1, confidence)
    if low < 0.0 and min(clusters.values) >= 0.0:
        low, high = bootstrap_interval(clusters, confidence)
        return low, high, IntervalMethod.BOOTSTRAP
    return low, high, IntervalMethod.T


def effective_sample_size(clusters: Clusters) -> float:
    """n over the design effect: the binomial variance of the rate over its clustered
    variance. With one repeat per input it is exactly n. When every value is the same
    the within-input correlation is unknown, so each input counts once."""
    rate = clusters.mean
    binomial_variance = rate * (1.0 - rate)
    if binomial_variance == 0.0:
        return float(clusters.inputs)
    clustered = clusters.clustered_variance()
    if clustered == 0.0:
        return float(clusters.count)
    return min(float(clusters.count), binomial_variance / clustered)


def wilson_interval(
    rate: float, n: float, *, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float]:
    """The Wilson score interval of a rate observed over ``n`` trials (``n`` may be an
    effective, fractional size)."""
    check_confidence(confidence)
    if n <= 0:
        raise ValueError("the Wilson interval needs a positive sample size")
    scipy_stats()  # names the missing extra even when the quantile is cached
    z = _normal_quantile(0.5 + confidence / 2.0)
    z2n = z * z / n
    center = (rate + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(rate * (1.0 - rate) / n + z2n / (4.0 * n))
    return max(0.0, center - half), min(1.0, center + half)


def t_interval(
    mean: float, standard_error: float, degrees_of_freedom: float, confidence: float
) -> tuple[float, float]:
    """``mean`` ± Student's t quantile times ``standard_error``."""
    check_confidence(confidence)
    scipy_stats()  # names the missing extra even when the quantile is cached
    margin = _t_quantile(0.5 + confidence / 2.0, degrees_of_freedom)
    return mean - margin * standard_error, mean + margin * standard_error


# scipy's ppf costs tens of microseconds a call, and every metric of an experiment (and
# every experiment with as many inputs) asks for the same few quantiles: each is computed
# once per (probability, degrees of freedom).
@functools.lru_cache(maxsize=1024)
def _t_quantile(probability: float, degrees_of_freedom: float) -> float:
    return float(scipy_stats().t.ppf(probability, degrees_of_freedom))


@functools.lru_cache(maxsize=64)
def _normal_quantile(probability: float) -> float:
    return float(scipy_stats().norm.ppf(probability))


def bootstrap_interval(
    clusters: Clusters,
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean, resampling whole inputs with their
    repeats (so clusters stay clusters), from a seeded generator."""
    check_confidence(confidence)
    np = numpy()
    sums = np.array([math.fsum(group) for group in clusters.groups])
    sizes = np.array([len(group) for group in clusters.groups], dtype=float)
    generator = np.random.default_rng(seed)
    k = clusters.inputs
    rows = max(1, _BOOTSTRAP_CHUNK_CELLS // k)
    means = []
    for start in range(0, resamples, rows):
        picks = generator.integers(0, k, size=(min(rows, resamples - start), k))
        means.append(sums[picks].sum(axis=1) / sizes[picks].sum(axis=1))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.concatenate(means), [tail, 1.0 - tail])
    return float(low), float(high)


def check_confidence(confidence: float) -> None:
    """Raises ``ValueError`` unless ``confidence`` is strictly between 0 and 1."""
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be strictly between 0 and 1, for example 0.95")
