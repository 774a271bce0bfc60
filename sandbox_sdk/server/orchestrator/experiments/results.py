"""Aggregate metrics of an experiment's samples: mean and 95% confidence interval each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sandbox_sdk.models.results import SAMPLE_MEASUREMENTS
from sandbox_sdk.server.orchestrator.experiments.records import SampleRecord
from sandbox_sdk.utils.stats import Summary, summarize


@dataclass(frozen=True)
class Aggregates:
    """Per-metric summaries (timings, tokens, then scores) and total token usage."""

    metrics: list[tuple[str, Summary]]
    prompt_tokens: int
    completion_tokens: int


def aggregate(samples: Sequence[SampleRecord]) -> Aggregates:
    """Summaries over every sample whose model call succeeded; scores over those that have one."""
    succeeded = [s for s in samples if not s.error]
    metrics: list[tuple[str, Summary]] = []
    if succeeded:
        for name in SAMPLE_MEASUREMENTS:
            metrics.append((name, summarize([float(getattr(s, name)) for s in succeeded])))
    score_names = sorted({name for s in succeeded for name in s.scores})
    for name in score_names:
        values = [s.scores[name] for s in succeeded if name in s.scores]
        metrics.append((name, summarize(values)))
    return Aggregates(
        metrics=metrics,
        prompt_tokens=sum(s.prompt_tokens for s in samples),
        completion_tokens=sum(s.completion_tokens for s in samples),
    )
