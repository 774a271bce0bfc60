"""Metric stream views: sparkline, table, optional plot."""

from __future__ import annotations

import sys
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


def test_plot_draws_one_chart_per_metric(tmp_path: Path) -> None:
    pyplot = pytest.importorskip("matplotlib.pyplot", reason="make install adds [analysis]")
    saved = plot_metrics(SAMPLES, tmp_path / "m.png")
    assert saved.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    image = pyplot.imread(saved)
    assert image.shape[0] > image.shape[1] / 4  # two charts stacked, not one strip
    svg = plot_metrics(SAMPLES, tmp_path / "m.svg").read_text()
    assert "latency_seconds (s)" in svg
    assert "tokens_per_second (tokens/s)" in svg
    with pytest.raises(ValueError, match="no metric samples"):
        plot_metrics([], tmp_path / "none.png")


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'sandbox-sdk\[analysis\]'"):
        plot_metrics(SAMPLES, tmp_path / "m.png")
