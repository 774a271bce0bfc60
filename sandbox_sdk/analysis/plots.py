"""Pictures of results and comparisons: each metric's estimate with its error bar.

One small panel per metric, because metrics live on different scales (a 0/1 score,
seconds, tokens) and one shared axis would flatten all but the largest. matplotlib
(the ``[analysis]`` extra) is imported only when a picture is drawn, so a client-only
install can import this module.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox_sdk.analysis.numerics import AnalysisDependencyError
from sandbox_sdk.models.results import IntervalMethod

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from sandbox_sdk.models.comparison import ExperimentComparison, MetricComparison
    from sandbox_sdk.models.results import AggregateMetric, ExperimentResults

_COLUMNS = 4
_PANEL_INCHES = (3.2, 3.6)
_COLOR = "tab:blue"
_SIGNIFICANT_COLOR = "tab:orange"
_FAILED_COLOR = "tab:red"


@dataclass(frozen=True, slots=True)
class _Panel:
    """What one metric's panel shows; ``value`` is ``None`` when there is nothing to draw."""

    title: str
    value: float | None
    low: float | None
    high: float | None
    caption: tuple[str, ...]
    note: str = ""
    note_color: str = _FAILED_COLOR
    color: str = _COLOR
    unit_interval: bool = False
    zero_line: bool = False


def plot_results(
    results: ExperimentResults,
    path: str | os.PathLike[str],
    metrics: Sequence[str] | None = None,
) -> Path:
    """Saves each metric's mean with its confidence interval to ``path`` and returns it.

    The format follows the suffix (``.png``, ``.svg``, ``.pdf``...). A metric without
    an interval (fewer than two inputs) is drawn without a bar and labelled "n/a"; a
    metric whose scorer failed on some samples says how many. ``metrics`` picks and
    orders the metrics shown (default: all). Needs the ``[analysis]`` extra.
    """
    return _save(results_figure(results, metrics), path)


def plot_comparison(comparison: ExperimentComparison, path: str | os.PathLike[str]) -> Path:
    """Saves each metric's difference b - a with its interval and a zero line to ``path``.

    Differences beyond noise (after Holm's correction over the metrics compared) are
    marked. Needs the ``[analysis]`` extra.
    """
    return _save(comparison_figure(comparison), path)


def results_figure(results: ExperimentResults, metrics: Sequence[str] | None = None) -> Figure:
    """The figure :func:`plot_results` saves, to adjust or embed before saving."""
    failures = results.score_failures()
    names = list(metrics) if metrics is not None else _all_metric_names(results, failures)
    unknown = [name for name in names if name not in results.metrics and name not in failures]
    if unknown:
        known = sorted({*results.metrics, *failures})
        raise ValueError(f"no metric {unknown[0]!r} in these results; they have {known}")
    if not names:
        raise ValueError("no metrics to plot: the results have no aggregate metrics")
    panels = [_result_panel(results, name, failures.get(name, 0)) for name in names]
    info = results.experiment
    title = f"{info.id} ({info.model})" if info.model else info.id
    return _figure(panels, f"{title}: mean and confidence interval per metric", "plot_results")


def comparison_figure(comparison: ExperimentComparison) -> Figure:
    """The figure :func:`plot_comparison` saves, to adjust or embed before saving."""
    if not comparison.metrics:
        raise ValueError("no metrics to plot: the experiments have no metric in common")
    panels = [_comparison_panel(metric, comparison.confidence) for metric in comparison.metrics]
    title = (
        f"difference b - a per metric (a: {comparison.experiment_a}, b: {comparison.experiment_b})"
        "\n* beyond noise after Holm's correction"
    )
    return _figure(panels, title, "plot_comparison")


def _all_metric_names(results: ExperimentResults, failures: dict[str, int]) -> list[str]:
    # A scorer that failed on every sample may have no aggregate; it is shown all the same.
    return [*results.metrics, *sorted(failures.keys() - results.metrics.keys())]


def _result_panel(results: ExperimentResults, name: str, failures: int) -> _Panel:
    metric = results.metrics.get(name)
    failed = metric.failed if metric is not None and metric.failed else failures
    if metric is None or metric.count == 0:
        return _Panel(
            title=name,
            value=None,
            low=None,
            high=None,
            caption=("no values: the scorer failed on every sample" if failed else "no values",),
            note=f"all {failed} failed" if failed else "",
        )
    return _Panel(
        title=name,
        value=metric.mean,
        low=metric.ci_low if metric.has_interval else None,
        high=metric.ci_high if metric.has_interval else None,
        caption=(_estimate_caption(metric), _count_caption(metric)),
        note=f"{failed} failed" if failed else "",
        unit_interval=_is_zero_one(results, metric),
    )


def _estimate_caption(metric: AggregateMetric) -> str:
    if not metric.has_interval:
        return f"mean {_number(metric.mean)}, {metric.confidence:.0%} CI n/a"
    interval = f"[{_number(metric.ci_low)}, {_number(metric.ci_high)}]"
    method = metric.interval_method.value.lower()
    return f"mean {_number(metric.mean)}, {metric.confidence:.0%} CI {interval} ({method})"


def _count_caption(metric: AggregateMetric) -> str:
    if metric.repeats > 1:
        return f"n={metric.count}: {metric.inputs} inputs x {metric.repeats} repeats"
    return f"n={metric.count} {'input' if metric.count == 1 else 'inputs'}"


def _is_zero_one(results: ExperimentResults, metric: AggregateMetric) -> bool:
    """Whether the metric is a 0/1 score, drawn on a [0, 1] axis."""
    if metric.interval_method == IntervalMethod.WILSON:
        return True
    values = results.values(metric.name) if metric.name in results.score_names() else []
    return bool(values) and all(value in (0.0, 1.0) for value in values)


def _comparison_panel(metric: MetricComparison, confidence: float) -> _Panel:
    has_interval = metric.ci_low is not None and metric.ci_high is not None
    interval = f"[{_number(metric.ci_low)}, {_number(metric.ci_high)}]" if has_interval else "n/a"
    return _Panel(
        title=f"{metric.name} *" if metric.significant else metric.name,
        value=metric.difference,
        low=metric.ci_low,
        high=metric.ci_high,
        caption=(
            f"b - a = {_number(metric.difference, signed=True)}, {confidence:.0%} CI {interval}",
            f"a {_number(metric.mean_a)} (n={metric.inputs_a}) → "
            f"b {_number(metric.mean_b)} (n={metric.inputs_b})",
            _test_caption(metric),
        ),
        note="beyond noise" if metric.significant else "",
        note_color=_SIGNIFICANT_COLOR,
        color=_SIGNIFICANT_COLOR if metric.significant else _COLOR,
        zero_line=True,
    )


def _test_caption(metric: MetricComparison) -> str:
    if metric.p_value_adjusted is None:
        return "no test: p n/a"
    design = "paired" if metric.paired else "unpaired"
    return f"{metric.test}, {design}: Holm p = {_number(metric.p_value_adjusted)}"


def _number(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3g}" if signed else f"{value:.3g}"


def _figure(panels: Sequence[_Panel], title: str, caller: str) -> Figure:
    figure_module, agg = _matplotlib(caller)
    columns = min(len(panels), _COLUMNS)
    rows = math.ceil(len(panels) / columns)
    width, height = _PANEL_INCHES
    figure: Figure = figure_module.Figure(
        figsize=(width * columns, height * rows + 0.6), layout="constrained"
    )
    agg.FigureCanvasAgg(figure)  # Agg, without pyplot's global state
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis, panel in zip(axes.flat, panels, strict=False):
        _draw_panel(axis, panel)
    for axis in axes.flat[len(panels) :]:
        axis.set_axis_off()
    figure.suptitle(title)
    return figure


def _draw_panel(axis: Axes, panel: _Panel) -> None:
    # The note sits between the title and the axes, where no bar or line can hide it.
    axis.set_title(panel.title, pad=18 if panel.note else 6)
    if panel.note:
        axis.text(
            0.5,
            1.02,
            panel.note,
            transform=axis.transAxes,
            horizontalalignment="center",
            verticalalignment="bottom",
            color=panel.note_color,
            fontweight="bold",
        )
    axis.set_xlim(-1.0, 1.0)
    axis.set_xticks([])
    axis.set_xlabel("\n".join(panel.caption), fontsize="small")
    axis.margins(y=0.15)
    if panel.zero_line:
        axis.axhline(0.0, color="grey", linestyle="--", linewidth=1)
    if panel.unit_interval:
        axis.set_ylim(-0.05, 1.05)
    if panel.value is None:
        axis.set_yticks([])
        return
    if panel.low is not None and panel.high is not None:
        # Centred on the interval, not the estimate: an interval need not be
        # symmetric around the estimate, nor (bootstrap) even contain it.
        middle, half = (panel.low + panel.high) / 2, (panel.high - panel.low) / 2
        axis.errorbar([0.0], [middle], yerr=[half], fmt="none", capsize=10, color=panel.color)
    axis.plot([0.0], [panel.value], marker="o", markersize=8, color=panel.color)


def _matplotlib(caller: str) -> tuple[Any, Any]:
    try:
        # matplotlib itself first: a cached submodule would hide a missing parent.
        importlib.import_module("matplotlib")
        figure_module = importlib.import_module("matplotlib.figure")
        agg = importlib.import_module("matplotlib.backends.backend_agg")
    except ImportError as error:
        raise AnalysisDependencyError(
            f"{caller} needs matplotlib, which is not installed: "
            "pip install 'sandbox-sdk[analysis]'",
            name="matplotlib",
        ) from error
    return figure_module, agg


def _save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    figure.savefig(target)
    return target
