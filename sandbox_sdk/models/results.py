"""An experiment's results: per-sample outputs and scores, aggregate metrics, exports."""

from __future__ import annotations

import csv
import enum
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox_sdk.api.v1 import experiment_pb2
from sandbox_sdk.models.experiment import ExperimentInfo
from sandbox_sdk.utils.rich_tables import table_class
from sandbox_sdk.utils.units import from_duration_pb

if TYPE_CHECKING:
    from rich.table import Table

    from sandbox_sdk.models.comparison import ExperimentComparison

# Per-sample measurements available for every sample, besides the scorers' scores.
SAMPLE_MEASUREMENTS = (
    "latency_seconds",
    "time_to_first_token_seconds",
    "tokens_per_second",
    "prompt_tokens",
    "completion_tokens",
)


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_proto(cls, message: experiment_pb2.TokenUsage) -> TokenUsage:
        """Converts the wire form."""
        return cls(message.prompt_tokens, message.completion_tokens)


class IntervalMethod(enum.StrEnum):
    """How an aggregate's confidence interval was computed (see docs/statistics.md)."""

    NONE = "NONE"
    """No interval: fewer than two inputs have a value."""
    WILSON = "WILSON"
    """Wilson score interval of the rate of a 0/1 score; never outside [0, 1]."""
    T = "T"
    """Student's t interval of the mean, standard error clustered by input."""
    BOOTSTRAP = "BOOTSTRAP"
    """Percentile bootstrap over inputs (with their repeats), for non-negative metrics."""


_INTERVAL_METHODS = {
    number: IntervalMethod(name.removeprefix("INTERVAL_METHOD_"))
    for name, number in experiment_pb2.IntervalMethod.items()
    if name != "INTERVAL_METHOD_UNSPECIFIED"
}
_INTERVAL_METHOD_NUMBERS = {method: number for number, method in _INTERVAL_METHODS.items()}


@dataclass(frozen=True, slots=True)
class AggregateMetric:
    """A metric over all samples, repeats of an input counted as one cluster.

    Attributes:
        name: the score or measurement.
        count: values (samples with a value, every repeat counted).
        mean: arithmetic mean of the values (0 when ``count`` is 0).
        stddev: sample standard deviation of the values; None below two values.
        ci_low, ci_high: the interval of the mean at ``confidence``; None when
            ``interval_method`` is NONE.
        standard_error: standard error of the mean clustered by input; None below
            two inputs.
        interval_method: how the interval was made.
        confidence: the interval's confidence level, for example 0.95.
        inputs: distinct inputs with a value (the clusters).
        repeats: most repeats any input has.
        failed: samples whose scorer failed for this metric, so that have no value.
    """

    name: str
    count: int
    mean: float
    stddev: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    standard_error: float | None = None
    interval_method: IntervalMethod = IntervalMethod.NONE
    confidence: float = 0.95
    inputs: int = 0
    repeats: int = 0
    failed: int = 0

    @property
    def has_interval(self) -> bool:
        """Whether there is a confidence interval (at least two inputs had a value)."""
        return self.ci_low is not None and self.ci_high is not None

    @classmethod
    def from_proto(cls, message: experiment_pb2.AggregateMetric) -> AggregateMetric:
        """Converts the wire form."""
        has_interval = message.HasField("ci_low") and message.HasField("ci_high")
        # Servers from before interval methods sent only Student's t intervals.
        method = _INTERVAL_METHODS.get(message.interval_method, IntervalMethod.T)
        return cls(
            name=message.name,
            count=message.count,
            mean=message.mean,
            stddev=message.stddev if message.HasField("stddev") else None,
            ci_low=message.ci_low if has_interval else None,
            ci_high=message.ci_high if has_interval else None,
            standard_error=(message.standard_error if message.HasField("standard_error") else None),
            interval_method=method if has_interval else IntervalMethod.NONE,
            confidence=message.confidence or 0.95,
            inputs=message.inputs,
            repeats=message.repeats,
            failed=message.failed,
        )

    def to_proto(self) -> experiment_pb2.AggregateMetric:
        """The wire form."""
        message = experiment_pb2.AggregateMetric(
            name=self.name,
            count=self.count,
            mean=self.mean,
            interval_method=_INTERVAL_METHOD_NUMBERS[self.interval_method],
            confidence=self.confidence,
            inputs=self.inputs,
            repeats=self.repeats,
            failed=self.failed,
        )
        if self.stddev is not None:
            message.stddev = self.stddev
        if self.ci_low is not None and self.ci_high is not None:
            message.ci_low = self.ci_low
            message.ci_high = self.ci_high
        if self.standard_error is not None:
            message.standard_error = self.standard_error
        return message


@dataclass(frozen=True, slots=True)
class SampleResult:
    """The outcome of one input and repeat."""

    input_index: int
    repeat: int
    prompt: str
    output: str
    expected: str = ""
    seed: int | None = None
    scores: dict[str, float] = field(default_factory=dict)
    score_errors: dict[str, str] = field(default_factory=dict)
    usage: TokenUsage = field(default_factory=TokenUsage)
    latency_seconds: float = 0.0
    time_to_first_token_seconds: float = 0.0
    tokens_per_second: float = 0.0
    finish_reason: str = ""
    error: str = ""
    turns: int = 0
    """Model turns of the sandbox tool loop (0 without the tool)."""
    tool_calls: int = 0
    """Commands the model ran through the sandbox tool."""
    tool_errors: int = 0
    """Tool calls refused, not started, or ended by the timeout or a signal."""

    def measurement(self, name: str) -> float | None:
        """A score or a built-in measurement (see ``SAMPLE_MEASUREMENTS``) by name."""
        if name in self.scores:
            return self.scores[name]
        if name == "prompt_tokens":
            return float(self.usage.prompt_tokens)
        if name == "completion_tokens":
            return float(self.usage.completion_tokens)
        if name in SAMPLE_MEASUREMENTS:
            value: float = getattr(self, name)
            return value
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_proto(cls, message: experiment_pb2.SampleResult) -> SampleResult:
        """Converts the wire form."""
        return cls(
            input_index=message.input_index,
            repeat=message.repeat,
            prompt=message.prompt,
            output=message.output,
            expected=message.expected,
            seed=message.seed if message.HasField("seed") else None,
            scores=dict(message.scores),
            score_errors=dict(message.score_errors),
            usage=TokenUsage.from_proto(message.usage),
            latency_seconds=from_duration_pb(message.latency),
            time_to_first_token_seconds=from_duration_pb(message.time_to_first_token),
            tokens_per_second=message.tokens_per_second,
            finish_reason=message.finish_reason,
            error=message.error,
            turns=message.turns,
            tool_calls=message.tool_calls,
            tool_errors=message.tool_errors,
        )


_CSV_COLUMNS = (
    "input_index",
    "repeat",
    "seed",
    "prompt",
    "expected",
    "output",
    "finish_reason",
    "error",
    "prompt_tokens",
    "completion_tokens",
    "latency_seconds",
    "time_to_first_token_seconds",
    "tokens_per_second",
)


@dataclass
class ExperimentResults:
    """Everything an experiment produced.

    Attributes:
        experiment: the experiment's final snapshot.
        samples: one result per input and repeat, ordered by input then repeat.
        metrics: aggregate metrics by name, computed by the service over all samples.
        total_usage: token counts over all samples.
    """

    experiment: ExperimentInfo
    samples: list[SampleResult] = field(default_factory=list)
    metrics: dict[str, AggregateMetric] = field(default_factory=dict)
    total_usage: TokenUsage = field(default_factory=TokenUsage)

    @property
    def outputs(self) -> list[str]:
        """The model outputs, in sample order."""
        return [sample.output for sample in self.samples]

    def values(self, metric: str) -> list[float]:
        """The per-sample values of a score or measurement, skipping samples without it."""
        found = (sample.measurement(metric) for sample in self.samples)
        return [value for value in found if value is not None]

    def score_names(self) -> list[str]:
        """Names of the scores present in any sample, sorted."""
        return sorted({name for sample in self.samples for name in sample.scores})

    def to_jsonl(self, path: str | os.PathLike[str]) -> Path:
        """Writes one JSON object per sample to ``path`` and returns it."""
        target = Path(path)
        with target.open("w", encoding="utf-8") as out:
            for sample in self.samples:
                record = {"experiment_id": self.experiment.id, **sample.to_dict()}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return target

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Writes one CSV row per sample (scores as ``score:<name>`` columns) and returns it."""
        target = Path(path)
        with target.open("w", encoding="utf-8", newline="") as out:
            self.write_csv(out)
        return target

    def write_csv(self, out: Any) -> None:
        """Writes the CSV form to an open text stream."""
        scores = self.score_names()
        errors = sorted({name for sample in self.samples for name in sample.score_errors})
        writer = csv.writer(out)
        writer.writerow(
            [*_CSV_COLUMNS, *(f"score:{n}" for n in scores), *(f"score_error:{n}" for n in errors)]
        )
        for sample in self.samples:
            writer.writerow(
                [
                    *_csv_base_row(sample),
                    *(_blank_if_none(sample.scores.get(n)) for n in scores),
                    *(sample.score_errors.get(n, "") for n in errors),
                ]
            )

    def score_failures(self) -> dict[str, int]:
        """Samples whose scorer failed, by metric name (empty when none failed).

        Counted from the samples when they are here, else from the aggregates."""
        failures: dict[str, int] = {m.name: m.failed for m in self.metrics.values() if m.failed}
        if self.samples:
            failures = {}
            for sample in self.samples:
                for name in sample.score_errors:
                    failures[name] = failures.get(name, 0) + 1
        return dict(sorted(failures.items()))

    def to_table(self) -> Table:
        """A rich table of the aggregate metrics (needs the ``[cli]`` extra): each mean with
        its interval ("n/a" when there is none) and the samples whose scorer failed."""
        Table = table_class("ExperimentResults.to_table", instead="to_csv()")

        info = self.experiment
        table = Table(
            title=f"{info.id} ({info.model}) {info.state.value}: "
            f"{len(self.samples)} samples, {self.total_usage.total_tokens} tokens"
        )
        confidence = next(iter(self.metrics.values())).confidence if self.metrics else 0.95
        columns = ("metric", "n", "inputs x repeats", "mean", "stddev", f"{confidence:.0%} CI")
        for column in (*columns, "interval", "failed"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for metric in self.metrics.values():
            table.add_row(
                metric.name,
                str(metric.count),
                f"{metric.inputs}x{metric.repeats}",
                f"{metric.mean:.4g}" if metric.count else "n/a",
                f"{metric.stddev:.3g}" if metric.stddev is not None else "n/a",
                _format_interval(metric),
                metric.interval_method.value.lower() if metric.has_interval else "",
                f"[bold red]{metric.failed} failed[/bold red]" if metric.failed else "",
            )
        return table

    def samples_table(self, width: int = 60) -> Table:
        """A rich table with one row per sample, long texts shortened to ``width``."""
        Table = table_class("ExperimentResults.samples_table", instead="to_csv()")

        scores = self.score_names()
        table = Table(title=f"{self.experiment.id} samples")
        for column in ("#", "rep", "prompt", "output", *scores, "latency s"):
            table.add_column(column)
        for sample in self.samples:
            table.add_row(
                str(sample.input_index),
                str(sample.repeat),
                _shorten(sample.prompt, width),
                _shorten(sample.error or sample.output, width),
                *(_format_score(sample, name) for name in scores),
                f"{sample.latency_seconds:.2f}",
            )
        return table

    def compare(self, other: ExperimentResults) -> ExperimentComparison:
        """Puts this experiment's metrics next to ``other``'s (see ``compare_results``)."""
        from sandbox_sdk.models.comparison import compare_results

        return compare_results(self, other)

    def plot(self, path: str | os.PathLike[str], metrics: Sequence[str] | None = None) -> Path:
        """Draws each metric's mean with its interval as error bars to ``path`` (needs the
        ``[analysis]`` extra); see ``sandbox_sdk.analysis.plots.plot_results``."""
        from sandbox_sdk.analysis.plots import plot_results

        return plot_results(self, path, metrics)

    @classmethod
    def from_pages(
        cls,
        pages: Iterable[Any],
    ) -> ExperimentResults:
        """Builds the results from ``GetExperimentResultsResponse`` pages."""
        results: ExperimentResults | None = None
        for page in pages:
            if results is None:
                results = cls(
                    experiment=ExperimentInfo.from_proto(page.experiment),
                    metrics={m.name: AggregateMetric.from_proto(m) for m in page.metrics},
                    total_usage=TokenUsage.from_proto(page.total_usage),
                )
            results.samples.extend(SampleResult.from_proto(s) for s in page.samples)
        if results is None:
            raise ValueError("no result pages")
        return results


def _csv_base_row(sample: SampleResult) -> Sequence[object]:
    return (
        sample.input_index,
        sample.repeat,
        _blank_if_none(sample.seed),
        sample.prompt,
        sample.expected,
        sample.output,
        sample.finish_reason,
        sample.error,
        sample.usage.prompt_tokens,
        sample.usage.completion_tokens,
        sample.latency_seconds,
        sample.time_to_first_token_seconds,
        sample.tokens_per_second,
    )


def _format_interval(metric: AggregateMetric) -> str:
    if metric.ci_low is None or metric.ci_high is None:
        return "n/a"
    return f"[{metric.ci_low:.4g}, {metric.ci_high:.4g}]"


def _blank_if_none(value: object) -> object:
    return "" if value is None else value


def _shorten(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _format_score(sample: SampleResult, name: str) -> str:
    if name in sample.scores:
        return f"{sample.scores[name]:.3g}"
    return "error" if name in sample.score_errors else ""
