"""The server's aggregates: clustered by input, interval by kind, failures counted.

The interval arithmetic itself is checked against reference values in
tests/sdk/test_sdk_statistics.py; here, that the server feeds it the right samples.
"""

from __future__ import annotations

import math

import pytest

from sandbox_sdk.api.v1 import experiment_pb2
from sandbox_sdk.models.results import SAMPLE_MEASUREMENTS, AggregateMetric, IntervalMethod
from sandbox_sdk.server.orchestrator.experiments import convert
from sandbox_sdk.server.orchestrator.experiments.records import SampleRecord
from sandbox_sdk.server.orchestrator.experiments.results import aggregate

Z_975 = 1.959963984540054


def _sample(
    index: int,
    repeat: int = 0,
    *,
    scores: dict[str, float] | None = None,
    score_errors: dict[str, str] | None = None,
    error: str = "",
    completion_tokens: int = 4,
) -> SampleRecord:
    return SampleRecord(
        input_index=index,
        repeat=repeat,
        seed=None,
        prompt=f"p{index}",
        expected="",
        output="",
        scores=scores or {},
        score_errors=score_errors or {},
        completion_tokens=completion_tokens,
        latency_seconds=0.1 * (index + 1),
        error=error,
    )


def _metrics(samples: list[SampleRecord]) -> dict[str, AggregateMetric]:
    return dict(aggregate(samples).metrics)


def test_a_contains_score_over_three_inputs_stays_within_zero_and_one() -> None:
    # The case: [-0.77, 2.10] before. Wilson for 2 of 3, written out.
    metrics = _metrics([_sample(i, scores={"contains": v}) for i, v in enumerate([1, 1, 0])])
    contains = metrics["contains"]
    p, n, z = 2 / 3, 3, Z_975
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    center = p + z * z / (2 * n)
    expected = ((center - half) / (1 + z * z / n), (center + half) / (1 + z * z / n))
    assert contains.interval_method is IntervalMethod.WILSON
    assert (contains.ci_low, contains.ci_high) == pytest.approx(expected)
    assert (contains.ci_low, contains.ci_high) == pytest.approx((0.2077, 0.9385), abs=1e-4)


def test_two_inputs_with_two_repeats_are_two_clusters() -> None:
    samples = [
        _sample(i, r, scores={"exact": v})
        for i, vs in enumerate([[1, 1], [0, 1]])
        for r, v in enumerate(vs)
    ]
    exact = _metrics(samples)["exact"]
    assert (exact.count, exact.inputs, exact.repeats) == (4, 2, 2)
    # Per-input means 1 and 0.5: their standard deviation over √2.
    assert exact.standard_error == pytest.approx(0.25)


def test_one_input_gets_no_interval() -> None:
    metrics = _metrics([_sample(0, scores={"exact": 1.0})])
    for metric in metrics.values():
        assert metric.interval_method is IntervalMethod.NONE
        assert metric.ci_low is None
        assert metric.stddev is None


def test_token_counts_are_never_given_negative_bounds() -> None:
    samples = [_sample(i, completion_tokens=t) for i, t in enumerate([3, 4, 250, 5])]
    tokens = _metrics(samples)["completion_tokens"]
    assert tokens.ci_low is not None
    assert tokens.ci_low >= 0.0
    assert tokens.interval_method is IntervalMethod.BOOTSTRAP
    assert _metrics(samples)["completion_tokens"] == tokens  # the same on every read


def test_scorer_failures_are_counted_and_a_scorer_that_always_failed_is_listed() -> None:
    samples = [
        _sample(0, scores={"exact": 1.0}, score_errors={"judge": "timeout"}),
        _sample(1, score_errors={"judge": "timeout", "exact": "bad regex"}),
        _sample(2, scores={"exact": 0.0}, score_errors={"judge": "timeout"}),
        _sample(3, error="model failed"),
    ]
    metrics = _metrics(samples)
    assert (metrics["exact"].count, metrics["exact"].failed) == (2, 1)
    judge = metrics["judge"]
    assert (judge.count, judge.failed, judge.inputs) == (0, 3, 0)
    assert judge.interval_method is IntervalMethod.NONE
    # Model failures are the sample's error, not a scorer's: measured over successes only.
    assert metrics["latency_seconds"].count == 3
    assert list(metrics)[: len(SAMPLE_MEASUREMENTS)] == list(SAMPLE_MEASUREMENTS)


def test_the_wire_form_says_how_the_interval_was_made() -> None:
    metrics = _metrics([_sample(i, scores={"exact": v}) for i, v in enumerate([1, 0, 1])])
    message = convert.aggregate_to_proto("exact", metrics["exact"])
    assert message.interval_method == experiment_pb2.INTERVAL_METHOD_WILSON
    assert (message.inputs, message.repeats, message.failed) == (3, 1, 0)
    assert message.confidence == pytest.approx(0.95)
    assert AggregateMetric.from_proto(message) == metrics["exact"]
    single = convert.aggregate_to_proto(
        "exact", _metrics([_sample(0, scores={"exact": 1})])["exact"]
    )
    assert not single.HasField("ci_low")
    assert not single.HasField("ci_high")
    assert single.interval_method == experiment_pb2.INTERVAL_METHOD_NONE
