"""The interval the benchmarks put around a median over rounds: the order statistics it
picks, and that it covers the true median as often as it claims, on skewed samples."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench_common import median_interval, median_ratio


@pytest.mark.parametrize(
    ("count", "rank"),
    # The textbook ranks of a 95% interval of the median: the rank-th smallest and
    # rank-th largest of count values.
    [(6, 1), (8, 1), (12, 3), (20, 6), (100, 40)],
)
def test_it_picks_the_ranks_whose_coverage_is_at_least_95_per_cent(count: int, rank: int) -> None:
    values = [float(value) for value in range(count)]
    random.Random(count).shuffle(values)
    assert median_interval(values) == (float(rank - 1), float(count - rank))


def test_too_few_values_have_no_interval() -> None:
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None
    assert median_ratio([1.0, 2.0, 3.0, 4.0, 5.0]) == {"ratio": 3.0, "interval": ""}
    assert median_ratio([1.2, 1.3, 1.31, 1.32, 1.33, 1.34567]) == {
        "ratio": 1.315,
        "interval": "1.200-1.346",
    }


def test_it_covers_a_skewed_distributions_median_at_least_95_per_cent_of_the_time() -> None:
    # Lognormal, as a noisy machine's per-round ratios are: skewed to the right.
    generator = random.Random(2411_00640)
    true_median = 1.25  # the median of exp(N(log 1.25, s)) is 1.25 for any s
    trials = 4000
    covered = 0
    for _ in range(trials):
        values = [generator.lognormvariate(math.log(true_median), 0.1) for _ in range(20)]
        interval = median_interval(values)
        assert interval is not None
        covered += interval[0] <= true_median <= interval[1]
    # 20 values: the claimed coverage is 95.9%; 4000 trials put 3 standard errors at 0.9%.
    assert covered / trials >= 0.95
