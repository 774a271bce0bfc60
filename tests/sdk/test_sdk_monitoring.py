"""Metric stream views: sparkline, table, optional plot."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sandbox_sdk.models import MetricSample
from sandbox_sdk.monitoring import by_input, group_metrics, metrics_table, plot_metrics, sparkline

SAMPLES = [
    MetricSample("latency_seconds", 0.5, "s", 0),
    MetricSample("tokens_per_second", 10, "tokens/s", 0),
    MetricSample("latency_seconds", 1.5, "s", 1),
    MetricSample("latency_seconds", 1.0, "s", 1),
]


def test_sparkline_scales_between_min_and_max() -> None:
    assert sparkline([0, 7, 14]) == "▁▅█"
    assert sparkline([3, 3]) == "▅▅"
    assert sparkline([]) == ""
    assert len(sparkline(range(100), width=10)) == 10


def test_grouping_and_table() -> None:
    grouped = group_metrics(SAMPLES)
    assert list(grouped) == ["latency_seconds", "tokens_per_second"]
    assert grouped["latency_seconds"].mean == 1.0
    assert by_input(SAMPLES, "latency_seconds") == {0: [0.5], 1: [1.5, 1.0]}
    assert metrics_table(SAMPLES).row_count == 2


def test_plot_needs_matplotlib_or_says_how_to_get_it(tmp_path: Path) -> None:
    target = tmp_path / "m.png"
    if importlib.util.find_spec("matplotlib") is None:
        with pytest.raises(ImportError, match="pip install matplotlib"):
            plot_metrics(SAMPLES, target)
    else:
        assert plot_metrics(SAMPLES, target).stat().st_size > 0
