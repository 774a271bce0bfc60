"""Two experiments' metrics side by side, with the difference and whether it is beyond noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandbox_sdk.models.results import SAMPLE_MEASUREMENTS, ExperimentResults
from sandbox_sdk.utils import stats
from sandbox_sdk.utils.rich_tables import table_class

if TYPE_CHECKING:
    from rich.table import Table


@dataclass(frozen=True, slots=True)
class MetricComparison:
    """One metric of experiment ``a`` against experiment ``b``.

    ``difference`` is ``mean_b - mean_a``; ``ci_low``/``ci_high`` bound it (Welch's
    t interval). ``significant`` is whether the interval excludes zero, or ``None``
    when either side has fewer than two values and noise cannot be judged.
    """

    name: str
    count_a: int
    count_b: int
    mean_a: float
    mean_b: float
    difference: float
    ci_low: float | None
    ci_high: float | None
    significant: bool | None

    @property
    def relative_change(self) -> float | None:
        """``difference / mean_a``, or ``None`` when ``mean_a`` is 0."""
        return self.difference / self.mean_a if self.mean_a else None


@dataclass(frozen=True, slots=True)
class ExperimentComparison:
    """Every metric both experiments have, compared."""

    experiment_a: str
    experiment_b: str
    metrics: tuple[MetricComparison, ...]
    confidence: float = stats.DEFAULT_CONFIDENCE

    def __getitem__(self, name: str) -> MetricComparison:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(f"no metric {name!r}; compared: {[m.name for m in self.metrics]}")

    def significant(self) -> list[MetricComparison]:
        """The metrics whose difference is beyond noise."""
        return [metric for metric in self.metrics if metric.significant]

    def to_table(self) -> Table:
        """A rich table: metric, both means, difference with its interval, verdict."""
        Table = table_class("ExperimentComparison.to_table", instead="its metrics")

        table = Table(title=f"{self.experiment_a} (a) vs {self.experiment_b} (b)")
        for column in ("metric", "a", "b", "b - a", f"{self.confidence:.0%} CI", "verdict"):
            table.add_column(column, justify="left" if column in ("metric", "verdict") else "right")
        for metric in self.metrics:
            interval = (
                f"[{metric.ci_low:.3g}, {metric.ci_high:.3g}]"
                if metric.ci_low is not None and metric.ci_high is not None
                else "-"
            )
            table.add_row(
                metric.name,
                f"{metric.mean_a:.4g}",
                f"{metric.mean_b:.4g}",
                f"{metric.difference:+.3g}",
                interval,
                _verdict(metric.significant),
            )
        return table


def _verdict(significant: bool | None) -> str:
    if significant is None:
        return "too few samples"
    return "[bold]beyond noise[/bold]" if significant else "within noise"


def compare_results(
    a: ExperimentResults, b: ExperimentResults, confidence: float = stats.DEFAULT_CONFIDENCE
) -> ExperimentComparison:
    """Compares every score and measurement present in both, from per-sample values."""
    names = [*sorted(set(a.score_names()) & set(b.score_names())), *SAMPLE_MEASUREMENTS]
    extra = sorted((a.metrics.keys() & b.metrics.keys()) - set(names))
    compared = [_compare_metric(name, a, b, confidence) for name in (*names, *extra)]
    return ExperimentComparison(
        experiment_a=a.experiment.id,
        experiment_b=b.experiment.id,
        metrics=tuple(metric for metric in compared if metric is not None),
        confidence=confidence,
    )


def _compare_metric(
    name: str, a: ExperimentResults, b: ExperimentResults, confidence: float
) -> MetricComparison | None:
    values_a, values_b = a.values(name), b.values(name)
    if len(values_a) >= 2 and len(values_b) >= 2:
        result = stats.compare(values_a, values_b, confidence)
        return MetricComparison(
            name,
            len(values_a),
            len(values_b),
            result.mean_a,
            result.mean_b,
            result.difference,
            result.ci_low,
            result.ci_high,
            result.significant,
        )
    if values_a and values_b:
        mean_a, mean_b = stats.mean(values_a), stats.mean(values_b)
        return MetricComparison(
            name, len(values_a), len(values_b), mean_a, mean_b, mean_b - mean_a, None, None, None
        )
    if name in a.metrics and name in b.metrics:
        # Only the service's aggregates exist for this metric: compare the means alone.
        metric_a, metric_b = a.metrics[name], b.metrics[name]
        return MetricComparison(
            name,
            metric_a.count,
            metric_b.count,
            metric_a.mean,
            metric_b.mean,
            metric_b.mean - metric_a.mean,
            None,
            None,
            None,
        )
    return None
