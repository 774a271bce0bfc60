"""Two experiments' metrics side by side: the difference, its interval, and whether it is
beyond noise after correcting for the number of metrics compared.

The statistics are in ``sandbox_sdk.analysis.differences`` (docs/statistics.md); comparing
needs the ``[analysis]`` extra (scipy) when both sides have at least two inputs.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox_sdk.analysis.clusters import Clusters
from sandbox_sdk.analysis.differences import (
    NO_TEST,
    Difference,
    holm_adjusted,
    paired_difference,
    unpaired_difference,
)
from sandbox_sdk.analysis.intervals import DEFAULT_CONFIDENCE, check_confidence
from sandbox_sdk.models.results import SAMPLE_MEASUREMENTS, ExperimentResults
from sandbox_sdk.utils.rich_tables import table_class

if TYPE_CHECKING:
    from rich.table import Table


@dataclass(frozen=True, slots=True)
class MetricComparison:
    """One metric of experiment ``a`` against experiment ``b``.

    Attributes:
        name: the score or measurement.
        count_a, count_b: values on each side (every repeat counted).
        inputs_a, inputs_b: inputs with a value on each side.
        mean_a, mean_b: the means of the values.
        difference: b - a over the per-input means (paired: the mean of the per-input
            differences over the inputs both have); ``mean_b - mean_a`` when every input
            has the same number of values on both sides.
        ci_low, ci_high: the interval of the difference; None when it cannot be judged.
        p_value: two-sided p-value of ``test``; None when no test applies.
        p_value_adjusted: ``p_value`` after Holm's adjustment over the metrics compared.
        test: "exact-mcnemar", "exact-sign", "paired-t", "welch-t" or "none".
        paired: whether inputs were paired (both experiments ran the same inputs).
        significant: whether the adjusted p-value is below 1 - confidence; None when
            there was no test (fewer than two inputs, no spread on either side, or, paired,
            no input changed: then the interval is [0, 0]).
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
    inputs_a: int = 0
    inputs_b: int = 0
    p_value: float | None = None
    p_value_adjusted: float | None = None
    test: str = NO_TEST
    paired: bool = False

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
    confidence: float = DEFAULT_CONFIDENCE

    def __getitem__(self, name: str) -> MetricComparison:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(f"no metric {name!r}; compared: {[m.name for m in self.metrics]}")

    def significant(self) -> list[MetricComparison]:
        """The metrics whose difference is beyond noise."""
        return [metric for metric in self.metrics if metric.significant]

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Draws each metric's difference b - a with its interval to ``path`` (needs the
        ``[analysis]`` extra); see ``sandbox_sdk.analysis.plots.plot_comparison``."""
        from sandbox_sdk.analysis.plots import plot_comparison

        return plot_comparison(self, path)

    def to_table(self) -> Table:
        """A rich table: metric, both means, difference with its interval, p, verdict."""
        Table = table_class("ExperimentComparison.to_table", instead="its metrics")

        table = Table(title=f"{self.experiment_a} (a) vs {self.experiment_b} (b)")
        columns = ("metric", "a", "b", "b - a", f"{self.confidence:.0%} CI", "p (Holm)", "test")
        for column in (*columns, "verdict"):
            table.add_column(column, justify="left" if column in ("metric", "verdict") else "right")
        for metric in self.metrics:
            interval = (
                f"[{metric.ci_low:.3g}, {metric.ci_high:.3g}]"
                if metric.ci_low is not None and metric.ci_high is not None
                else "n/a"
            )
            table.add_row(
                metric.name,
                f"{metric.mean_a:.4g}",
                f"{metric.mean_b:.4g}",
                f"{metric.difference:+.3g}",
                interval,
                f"{metric.p_value_adjusted:.3g}" if metric.p_value_adjusted is not None else "n/a",
                metric.test,
                _verdict(metric),
            )
        return table


def _verdict(metric: MetricComparison) -> str:
    if metric.significant is None:
        unchanged = metric.paired and metric.ci_low == 0.0 and metric.ci_high == 0.0
        return "no input changed" if unchanged else "too few samples"
    return "[bold]beyond noise[/bold]" if metric.significant else "within noise"


def compare_results(
    a: ExperimentResults, b: ExperimentResults, confidence: float = DEFAULT_CONFIDENCE
) -> ExperimentComparison:
    """Compares every score and measurement present in both, from per-sample values.

    Paired by input when both ran the same inputs (same index and prompt), else
    unpaired; p-values are Holm-adjusted over the metrics compared."""
    check_confidence(confidence)
    names = [*sorted(set(a.score_names()) & set(b.score_names())), *SAMPLE_MEASUREMENTS]
    extra = sorted((a.metrics.keys() & b.metrics.keys()) - set(names))
    paired = bool(a.samples) and _input_keys(a) == _input_keys(b)
    compared = [
        metric
        for name in (*names, *extra)
        if (metric := _compare_metric(name, a, b, paired, confidence)) is not None
    ]
    adjusted = holm_adjusted([metric.p_value for metric in compared])
    alpha = 1.0 - confidence
    return ExperimentComparison(
        experiment_a=a.experiment.id,
        experiment_b=b.experiment.id,
        metrics=tuple(
            replace(
                metric,
                p_value_adjusted=p,
                significant=None if p is None else p < alpha,
            )
            for metric, p in zip(compared, adjusted, strict=True)
        ),
        confidence=confidence,
    )


def _input_keys(results: ExperimentResults) -> set[tuple[int, str]]:
    return {(sample.input_index, sample.prompt) for sample in results.samples}


def _clusters(results: ExperimentResults, name: str) -> Clusters:
    keyed: list[tuple[Hashable, float]] = []
    for sample in results.samples:
        value = sample.measurement(name)
        if value is not None:
            keyed.append(((sample.input_index, sample.prompt), value))
    return Clusters.of(keyed)


def _compare_metric(
    name: str, a: ExperimentResults, b: ExperimentResults, paired: bool, confidence: float
) -> MetricComparison | None:
    clusters_a, clusters_b = _clusters(a, name), _clusters(b, name)
    if clusters_a.count and clusters_b.count:
        means_a, means_b = clusters_a.input_means(), clusters_b.input_means()
        if paired:
            single_binary = all(c.is_binary() and c.repeats == 1 for c in (clusters_a, clusters_b))
            result = paired_difference(
                means_a, means_b, binary_single_repeat=single_binary, confidence=confidence
            )
        else:
            result = unpaired_difference(
                list(means_a.values()), list(means_b.values()), confidence=confidence
            )
        return _comparison(name, clusters_a, clusters_b, result)
    if name in a.metrics and name in b.metrics:
        # Only the service's aggregates exist for this metric: compare the means alone.
        metric_a, metric_b = a.metrics[name], b.metrics[name]
        return MetricComparison(
            name=name,
            count_a=metric_a.count,
            count_b=metric_b.count,
            mean_a=metric_a.mean,
            mean_b=metric_b.mean,
            difference=metric_b.mean - metric_a.mean,
            ci_low=None,
            ci_high=None,
            significant=None,
            inputs_a=metric_a.inputs,
            inputs_b=metric_b.inputs,
        )
    return None


def _comparison(name: str, a: Clusters, b: Clusters, result: Difference) -> MetricComparison:
    return MetricComparison(
        name=name,
        count_a=a.count,
        count_b=b.count,
        mean_a=a.mean,
        mean_b=b.mean,
        difference=result.difference,
        ci_low=result.ci_low,
        ci_high=result.ci_high,
        significant=None,
        inputs_a=a.inputs,
        inputs_b=b.inputs,
        p_value=result.p_value,
        test=result.test,
        paired=result.paired,
    )
