"""Pictures of results and comparisons: error bars where the intervals are, failures shown."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox_sdk.analysis.numerics import AnalysisDependencyError
from sandbox_sdk.analysis.plots import (
    comparison_figure,
    plot_comparison,
    plot_results,
    results_figure,
)
from sandbox_sdk.models import (
    AggregateMetric,
    ExperimentComparison,
    ExperimentInfo,
    ExperimentResults,
    ExperimentState,
    MetricComparison,
    SampleResult,
)
from sandbox_sdk.models.results import IntervalMethod

pytest.importorskip("matplotlib", reason="make install adds [analysis]")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Three inputs, one repeat: `contains` scored 1, 1, 0; `exact` scored only the first input
# (its scorer failed on the others); `judge` and `regex` failed on every sample.
FAILED_EVERYWHERE = {"judge": "timeout", "regex": "bad pattern"}
SAMPLES = [
    SampleResult(
        0, 0, "p0", "o0", scores={"contains": 1.0, "exact": 1.0}, score_errors=FAILED_EVERYWHERE
    ),
    SampleResult(
        1,
        0,
        "p1",
        "o1",
        scores={"contains": 1.0},
        score_errors={"exact": "boom", **FAILED_EVERYWHERE},
    ),
    SampleResult(
        2,
        0,
        "p2",
        "o2",
        scores={"contains": 0.0},
        score_errors={"exact": "boom", **FAILED_EVERYWHERE},
    ),
]

CONTAINS = AggregateMetric(
    name="contains",
    count=3,
    mean=2 / 3,
    stddev=0.577,
    ci_low=0.2077,
    ci_high=0.9385,
    standard_error=0.333,
    interval_method=IntervalMethod.WILSON,
    inputs=3,
    repeats=1,
)
LATENCY = AggregateMetric(
    name="latency_seconds",
    count=3,
    mean=1.2,
    stddev=0.3,
    ci_low=0.455,
    ci_high=1.945,
    standard_error=0.173,
    interval_method=IntervalMethod.T,
    inputs=3,
    repeats=1,
)
EXACT = AggregateMetric(name="exact", count=1, mean=1.0, inputs=1, repeats=1, failed=2)
REGEX = AggregateMetric(name="regex", count=0, mean=0.0, failed=3)


def _results() -> ExperimentResults:
    return ExperimentResults(
        experiment=ExperimentInfo("exp-a", "env-1", ExperimentState.SUCCEEDED, model="smollm2"),
        samples=list(SAMPLES),
        metrics={m.name: m for m in (CONTAINS, LATENCY, EXACT, REGEX)},
    )


SIGNIFICANT = MetricComparison(
    name="latency_seconds",
    count_a=3,
    count_b=3,
    inputs_a=3,
    inputs_b=3,
    mean_a=1.2,
    mean_b=0.8,
    difference=-0.4,
    ci_low=-0.61,
    ci_high=-0.19,
    p_value=0.004,
    p_value_adjusted=0.008,
    test="paired-t",
    paired=True,
    significant=True,
)
WITHIN_NOISE = MetricComparison(
    name="contains",
    count_a=3,
    count_b=3,
    inputs_a=3,
    inputs_b=3,
    mean_a=1 / 3,
    mean_b=2 / 3,
    difference=1 / 3,
    ci_low=-0.42,
    ci_high=0.91,
    p_value=1.0,
    p_value_adjusted=1.0,
    test="exact-mcnemar",
    paired=True,
    significant=False,
)
UNTESTED = MetricComparison(
    name="exact",
    count_a=1,
    count_b=1,
    inputs_a=1,
    inputs_b=1,
    mean_a=0.0,
    mean_b=1.0,
    difference=1.0,
    ci_low=None,
    ci_high=None,
    significant=None,
)
COMPARISON = ExperimentComparison("exp-a", "exp-b", (SIGNIFICANT, WITHIN_NOISE, UNTESTED))


def _panels(figure: Any) -> dict[str, Any]:
    """The figure's metric panels by metric name (a '*' marks a significant one)."""
    return {axis.get_title(): axis for axis in figure.axes if axis.get_title()}


def _error_bar_extent(axis: Any) -> tuple[float, float] | None:
    """The y-extent of the panel's one error bar, or None when it has none."""
    if not axis.containers:
        return None
    (container,) = axis.containers
    (bars,) = container.lines[2]
    ((_, low), (_, high)), *others = bars.get_segments()
    assert others == []
    return low, high


def _marker_height(axis: Any) -> float:
    (marker,) = [line for line in axis.get_lines() if line.get_marker() == "o"]
    (height,) = marker.get_ydata()
    return float(height)


def _texts(axis: Any) -> list[str]:
    return [text.get_text() for text in axis.texts]


def test_each_metric_gets_its_interval_as_an_error_bar() -> None:
    panels = _panels(results_figure(_results()))

    assert list(panels) == ["contains", "latency_seconds", "exact", "regex", "judge"]
    for metric in (CONTAINS, LATENCY):
        assert _error_bar_extent(panels[metric.name]) == pytest.approx(
            (metric.ci_low, metric.ci_high)
        )
        assert _marker_height(panels[metric.name]) == pytest.approx(metric.mean)
    assert _error_bar_extent(panels["exact"]) is None
    assert _marker_height(panels["exact"]) == 1.0
    assert "95% CI n/a" in panels["exact"].get_xlabel()
    assert "95% CI [0.208, 0.939] (wilson)" in panels["contains"].get_xlabel()
    assert "n=3 inputs" in panels["contains"].get_xlabel()


def test_zero_one_scores_are_drawn_on_the_unit_axis() -> None:
    panels = _panels(results_figure(_results()))

    assert panels["contains"].get_ylim() == pytest.approx((-0.05, 1.05))  # Wilson
    assert panels["exact"].get_ylim() == pytest.approx((-0.05, 1.05))  # 0/1 values, no interval
    low, high = panels["latency_seconds"].get_ylim()
    assert low > 0.05  # a measurement keeps its own scale
    assert high > 1.945


def test_failed_scorers_are_annotated_not_omitted() -> None:
    panels = _panels(results_figure(_results()))

    assert _texts(panels["exact"]) == ["2 failed"]
    assert _texts(panels["contains"]) == []
    # An aggregate with no values, and a scorer with no aggregate at all.
    for name in ("regex", "judge"):
        assert _texts(panels[name]) == ["all 3 failed"]
        assert panels[name].get_lines() == []
        assert "no values" in panels[name].get_xlabel()


def test_a_metric_without_values_or_failures_claims_no_failure() -> None:
    results = _results()
    results.metrics["ttft"] = AggregateMetric(name="ttft", count=0, mean=0.0)

    (panel,) = _panels(results_figure(results, metrics=["ttft"])).values()

    assert _texts(panel) == []
    assert panel.get_xlabel() == "no values"


def test_results_are_saved_as_png_and_as_svg_with_labels(tmp_path: Path) -> None:
    results = _results()

    png = plot_results(results, tmp_path / "results.png")
    assert png == tmp_path / "results.png"
    assert png.read_bytes().startswith(PNG_MAGIC)
    svg = plot_results(results, tmp_path / "results.svg").read_text(encoding="utf-8")
    for label in ("contains", "latency_seconds", "exact", "regex", "judge"):
        assert label in svg
    assert "95% CI n/a" in svg
    assert "2 failed" in svg
    assert "all 3 failed" in svg
    assert results.plot(tmp_path / "method.png").read_bytes().startswith(PNG_MAGIC)


def test_metrics_picks_and_orders_the_panels(tmp_path: Path) -> None:
    figure = results_figure(_results(), metrics=["latency_seconds", "contains"])
    assert list(_panels(figure)) == ["latency_seconds", "contains"]
    with pytest.raises(ValueError, match=r"no metric 'bleu'.*'contains'"):
        plot_results(_results(), tmp_path / "r.png", metrics=["bleu"])
    with pytest.raises(ValueError, match="no metrics to plot"):
        results_figure(ExperimentResults(experiment=_results().experiment))


def test_comparison_draws_differences_around_a_zero_line() -> None:
    panels = _panels(comparison_figure(COMPARISON))

    assert list(panels) == ["latency_seconds *", "contains", "exact"]
    for title, metric in (("latency_seconds *", SIGNIFICANT), ("contains", WITHIN_NOISE)):
        assert _error_bar_extent(panels[title]) == pytest.approx((metric.ci_low, metric.ci_high))
        assert _marker_height(panels[title]) == pytest.approx(metric.difference)
    assert _error_bar_extent(panels["exact"]) is None
    assert _marker_height(panels["exact"]) == 1.0
    for axis in panels.values():
        (zero,) = [line for line in axis.get_lines() if line.get_linestyle() == "--"]
        assert list(zero.get_ydata()) == [0, 0]
        low, high = axis.get_ylim()
        assert low < 0 < high


def test_comparison_marks_only_the_significant_differences() -> None:
    panels = _panels(comparison_figure(COMPARISON))

    assert _texts(panels["latency_seconds *"]) == ["beyond noise"]
    assert _texts(panels["contains"]) == []
    assert _texts(panels["exact"]) == []
    assert "paired-t, paired: Holm p = 0.008" in panels["latency_seconds *"].get_xlabel()
    assert "p n/a" in panels["exact"].get_xlabel()


def test_comparison_is_saved_with_its_differences(tmp_path: Path) -> None:
    assert plot_comparison(COMPARISON, tmp_path / "c.png").read_bytes().startswith(PNG_MAGIC)
    svg = plot_comparison(COMPARISON, tmp_path / "c.svg").read_text(encoding="utf-8")
    assert "b - a = -0.4, 95% CI [-0.61, -0.19]" in svg
    assert "b - a = +0.333, 95% CI [-0.42, 0.91]" in svg
    assert "b - a = +1, 95% CI n/a" in svg
    assert "beyond noise" in svg
    assert "difference b - a per metric (a: exp-a, b: exp-b)" in svg
    assert COMPARISON.plot(tmp_path / "method.png").read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="no metric in common"):
        comparison_figure(ExperimentComparison("exp-a", "exp-b", ()))


def test_plots_without_matplotlib_name_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    extra = r"pip install 'sandbox-sdk\[analysis\]'"
    with pytest.raises(ImportError, match=rf"plot_results needs matplotlib.*{extra}") as raised:
        plot_results(_results(), tmp_path / "r.png")
    assert isinstance(raised.value, AnalysisDependencyError)
    assert raised.value.name == "matplotlib"
    with pytest.raises(ImportError, match=rf"plot_comparison needs matplotlib.*{extra}"):
        plot_comparison(COMPARISON, tmp_path / "c.png")
    assert not (tmp_path / "r.png").exists()
