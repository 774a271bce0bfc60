"""sandbox_sdk.utils.stats against textbook values."""

from __future__ import annotations

import math

import pytest

from sandbox_sdk.utils import stats


@pytest.mark.parametrize(
    ("probability", "df", "expected"),
    [
        (0.975, 1, 12.7062),
        (0.975, 2, 4.3027),
        (0.975, 5, 2.5706),
        (0.975, 9, 2.2622),
        (0.975, 30, 2.0423),
        (0.995, 4, 4.6041),
        (0.95, 10, 1.8125),
        (0.975, 1e7, 1.9600),
        (0.025, 9, -2.2622),
    ],
)
def test_t_quantile_matches_tables(probability: float, df: float, expected: float) -> None:
    assert stats.t_quantile(probability, df) == pytest.approx(expected, abs=1e-4)


def test_summary_of_a_sample() -> None:
    summary = stats.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert summary.count == 5
    assert summary.mean == 3.0
    assert summary.stddev == pytest.approx(math.sqrt(2.5))
    margin = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert summary.ci_low == pytest.approx(3.0 - margin)
    assert summary.ci_high == pytest.approx(3.0 + margin)


def test_a_single_value_has_no_spread() -> None:
    summary = stats.summarize([7.0])
    assert (summary.count, summary.stddev, summary.ci_low, summary.ci_high) == (1, 0.0, 7.0, 7.0)


def test_welch_comparison_finds_a_real_difference() -> None:
    comparison = stats.compare([1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0, 7.0])
    assert comparison.difference == pytest.approx(2.5)
    # Welch-Satterthwaite degrees of freedom for these samples.
    assert comparison.degrees_of_freedom == pytest.approx(6.98077, abs=1e-4)
    assert comparison.ci_low == pytest.approx(0.23478, abs=1e-4)
    assert comparison.significant


def test_overlapping_samples_are_noise() -> None:
    comparison = stats.compare([0.5, 0.9, 0.1, 0.7], [0.6, 0.2, 0.8, 0.4])
    assert comparison.ci_low < 0 < comparison.ci_high
    assert not comparison.significant


def test_constant_samples_compare_exactly() -> None:
    assert stats.compare([1.0, 1.0], [1.0, 1.0]).significant is False
    different = stats.compare([1.0, 1.0], [2.0, 2.0])
    assert different.significant
    assert (different.ci_low, different.ci_high) == (1.0, 1.0)


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        stats.mean([])
    with pytest.raises(ValueError, match="two values"):
        stats.compare([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="confidence"):
        stats.confidence_interval([1.0, 2.0], confidence=1.5)
