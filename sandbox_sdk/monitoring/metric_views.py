"""Views of an experiment's metric stream: a rich table, sparklines, an optional plot."""

from __future__ import annotations

import importlib
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox_sdk.models.experiment import MetricSample
from sandbox_sdk.utils.rich_tables import table_class

if TYPE_CHECKING:
    from rich.table import Table

_BARS = "▁▂▃▄▅▆▇█"


@dataclass
class MetricSeries:
    """All values of one metric, in arrival order."""

    name: str
    unit: str = ""
    values: list[float] = field(default_factory=list)

    @property
    def last(self) -> float:
        """The newest value."""
        return self.values[-1]

    @property
    def mean(self) -> float:
        """The arithmetic mean."""
        return sum(self.values) / len(self.values)


def group_metrics(samples: Iterable[MetricSample]) -> dict[str, MetricSeries]:
    """Metric samples grouped by name, in order of first appearance."""
    series: dict[str, MetricSeries] = {}
    for sample in samples:
        entry = series.get(sample.name)
        if entry is None:
            entry = series[sample.name] = MetricSeries(sample.name, sample.unit)
        entry.values.append(sample.value)
    return series


def sparkline(values: Sequence[float], width: int = 30) -> str:
    """The last ``width`` values as a line of block characters (▁ lowest, █ highest)."""
    shown = list(values)[-width:]
    if not shown:
        return ""
    low, high = min(shown), max(shown)
    if high == low:
        return _BARS[len(_BARS) // 2] * len(shown)
    scale = (len(_BARS) - 1) / (high - low)
    return "".join(_BARS[round((value - low) * scale)] for value in shown)


def metrics_table(samples: Iterable[MetricSample], *, title: str = "metrics") -> Table:
    """One row per metric: count, last, mean, min, max and a sparkline; needs rich."""
    Table = table_class("metrics_table", instead="group_metrics() / sparkline()")

    table = Table(title=title)
    for column in ("metric", "unit", "n", "last", "mean", "min", "max", "trend"):
        table.add_column(
            column, justify="right" if column in ("n", "last", "mean", "min", "max") else "left"
        )
    for series in group_metrics(samples).values():
        table.add_row(
            series.name,
            series.unit,
            str(len(series.values)),
            f"{series.last:.4g}",
            f"{series.mean:.4g}",
            f"{min(series.values):.4g}",
            f"{max(series.values):.4g}",
            sparkline(series.values),
        )
    return table


def plot_metrics(samples: Iterable[MetricSample], path: str | os.PathLike[str]) -> Path:
    """Saves one line chart per metric to ``path`` (PNG, SVG... by suffix).

    Needs matplotlib (the ``[analysis]`` extra).
    """
    try:
        # Imported by name: matplotlib is optional and ships no type stubs here.
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        pyplot = importlib.import_module("matplotlib.pyplot")
    except ImportError as error:
        raise ImportError(
            "plot_metrics needs matplotlib, which is not installed: "
            "pip install 'sandbox-sdk[analysis]', or use metrics_table() / sparkline() "
            "for a text view"
        ) from error
    grouped = group_metrics(samples)
    if not grouped:
        raise ValueError("no metric samples to plot; did the experiment emit any?")
    figure, axes = pyplot.subplots(len(grouped), 1, figsize=(8, 2.2 * len(grouped)), squeeze=False)
    for axis, series in zip(axes[:, 0], grouped.values(), strict=True):
        axis.plot(range(len(series.values)), series.values, marker=".")
        axis.set_title(f"{series.name} ({series.unit})" if series.unit else series.name)
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target)
    pyplot.close(figure)
    return target


def by_input(samples: Iterable[MetricSample], name: str) -> dict[int, list[float]]:
    """The values of metric ``name`` per input index (-1 for experiment-wide samples)."""
    grouped: dict[int, list[float]] = defaultdict(list)
    for sample in samples:
        if sample.name == name:
            grouped[sample.input_index].append(sample.value)
    return dict(grouped)
