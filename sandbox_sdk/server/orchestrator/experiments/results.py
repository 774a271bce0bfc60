"""Aggregate metrics of an experiment's samples: each metric's mean and interval.

Repeats of an input are one cluster (see ``sandbox_sdk.analysis.intervals``). Every
scorer gets an aggregate, even one that failed on every sample (count 0, its failures
counted), so that a failure is never silently a missing row. The bootstrap can take a
moment on large experiments: ``aggregate`` runs on a reader thread (``store.aaggregates``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sandbox_sdk.analysis.intervals import summarize_metric
from sandbox_sdk.models.results import SAMPLE_MEASUREMENTS, AggregateMetric
from sandbox_sdk.server.orchestrator.experiments.records import SampleRecord

# The sandbox tool's loop counts, aggregated for experiments that offered the tool.
TOOL_MEASUREMENTS = ("turns", "tool_calls", "tool_errors")


@dataclass(frozen=True)
class Aggregates:
    """Per-metric aggregates (timings, tokens, then scores) and total token usage."""

    metrics: list[tuple[str, AggregateMetric]]
    prompt_tokens: int
    completion_tokens: int


def aggregate(samples: Sequence[SampleRecord]) -> Aggregates:
    """Aggregates over every sample whose model call succeeded (with the sandbox tool's
    turns, tool calls and tool errors when the tool was used); scores over those that
    have one, with the samples whose scorer failed counted as ``failed``."""
    succeeded = [s for s in samples if not s.error]
    metrics: list[tuple[str, AggregateMetric]] = []
    if succeeded:
        for name in SAMPLE_MEASUREMENTS:
            keyed = [(s.input_index, float(getattr(s, name))) for s in succeeded]
            metrics.append((name, summarize_metric(name, keyed)))
    if any(s.turns for s in succeeded):
        for name in TOOL_MEASUREMENTS:
            keyed = [(s.input_index, float(getattr(s, name))) for s in succeeded]
            metrics.append((name, summarize_metric(name, keyed)))
    score_names = sorted({name for s in succeeded for name in (*s.scores, *s.score_errors)})
    for name in score_names:
        keyed = [(s.input_index, s.scores[name]) for s in succeeded if name in s.scores]
        failed = sum(1 for s in succeeded if name in s.score_errors)
        metrics.append((name, summarize_metric(name, keyed, failed=failed)))
    return Aggregates(
        metrics=metrics,
        prompt_tokens=sum(s.prompt_tokens for s in samples),
        completion_tokens=sum(s.completion_tokens for s in samples),
    )
