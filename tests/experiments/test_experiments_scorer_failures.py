"""Scorer failures: logged once per scorer and counted, or fatal with fail_on_scorer_error."""

from __future__ import annotations

from sandbox_sdk.api.v1 import experiment_pb2, requests_pb2
from sandbox_sdk.server.orchestrator.experiments import ExperimentEngine, ExperimentHandlers
from sandbox_sdk.server.orchestrator.experiments.records import (
    ExperimentState,
    LogEvent,
    LogLevel,
)

from .conftest import EngineFactory, TenantContext
from .exp_support import SubprocessSandbox, create_request, make_spec, wait_final

CTX = TenantContext()
# Scores 1, except for the output "bad", on which it crashes.
FAILS_ON_BAD = ["sh", "-c", 'test "$(cat)" = bad && { echo boom >&2; exit 3; }; echo 1']


def _spec(prompts: list[str], *, fail_on_scorer_error: bool) -> experiment_pb2.ExperimentSpec:
    spec = make_spec(prompts, repeats=2)
    spec.scorers.add(name="picky").command.argv.extend(FAILS_ON_BAD)
    spec.scorers.add(name="has_b").regex.pattern = "b"
    spec.fail_on_scorer_error = fail_on_scorer_error
    return spec


async def _warnings(engine: ExperimentEngine, experiment_id: str) -> list[str]:
    return [
        e.payload.message
        async for e in engine.stream("default", experiment_id, 0, follow=False)
        if isinstance(e.payload, LogEvent) and e.payload.level is LogLevel.WARNING
    ]


async def test_without_the_option_failures_are_recorded_and_logged_once_per_scorer(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    handlers = ExperimentHandlers(engine)
    spec = _spec(["good", "bad", "bad"], fail_on_scorer_error=False)
    created = await handlers.CreateExperiment(create_request(sandbox.create(), spec), CTX)

    record = await wait_final(engine, created.experiment.id)

    assert record.state is ExperimentState.SUCCEEDED
    assert record.failure is None
    assert record.spec.fail_on_scorer_error is False
    samples = engine.store.samples(record.id)
    assert [list(s.score_errors) for s in samples] == [[], [], ["picky"], ["picky"]] + [
        ["picky"]
    ] * 2
    assert "exited with code 3: boom" in samples[2].score_errors["picky"]
    assert [s.scores for s in samples[2:]] == [{"has_b": 1.0}] * 4
    assert await _warnings(engine, record.id) == [
        "input 1 repeat 0: scorer picky failed: the scorer command exited with code 3: boom;"
        " its later failures are counted when the experiment ends",
        "scorer picky failed on 4 of 6 scored samples; each sample's score_errors says why",
    ]


async def test_with_the_option_the_first_failure_fails_the_experiment(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    handlers = ExperimentHandlers(engine)
    spec = _spec(["good", "bad", "good"], fail_on_scorer_error=True)
    created = await handlers.CreateExperiment(create_request(sandbox.create(), spec), CTX)
    assert created.experiment.spec.fail_on_scorer_error

    record = await wait_final(engine, created.experiment.id)

    assert record.state is ExperimentState.FAILED
    assert record.failure is not None
    assert record.failure.reason == "SCORER_FAILED"
    assert record.failure.message.startswith(
        "scorer picky failed on input 1 repeat 0: the scorer command exited with code 3: boom"
    )
    assert "fail_on_scorer_error" in record.failure.message
    # The samples finished before the failure, and the failing one, stay readable.
    results = await handlers.GetExperimentResults(
        requests_pb2.GetExperimentResultsRequest(experiment_id=record.id), CTX
    )
    assert [(s.input_index, s.repeat) for s in results.samples] == [(0, 0), (0, 1), (1, 0)]
    assert dict(results.samples[2].score_errors).keys() == {"picky"}
    assert record.completed_samples == 3
    assert await _warnings(engine, record.id) == [
        "input 1 repeat 0: scorer picky failed: the scorer command exited with code 3: boom"
    ]
    fetched = await handlers.GetExperiment(
        requests_pb2.GetExperimentRequest(experiment_id=record.id), CTX
    )
    assert fetched.experiment.spec.fail_on_scorer_error
    assert fetched.experiment.failure.reason == "SCORER_FAILED"


async def test_with_the_option_a_message_names_every_scorer_that_failed_on_the_sample(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    spec = make_spec(["x"])
    spec.scorers.add(name="first").command.argv.extend(["sh", "-c", "echo nope"])
    spec.scorers.add(name="second").command.argv.extend(["false"])
    spec.fail_on_scorer_error = True
    created = await ExperimentHandlers(engine).CreateExperiment(
        create_request(sandbox.create(), spec), CTX
    )

    record = await wait_final(engine, created.experiment.id)

    assert record.failure is not None
    assert record.failure.reason == "SCORER_FAILED"
    assert record.failure.message.startswith(
        "scorer first failed on input 0 repeat 0: the scorer command printed 'nope', not a number"
    )
    assert "1 more scorer(s) failed on it" in record.failure.message


async def test_with_the_option_an_experiment_whose_scorers_succeed_succeeds(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    spec = _spec(["good", "bob"], fail_on_scorer_error=True)
    created = await ExperimentHandlers(engine).CreateExperiment(
        create_request(sandbox.create(), spec), CTX
    )

    record = await wait_final(engine, created.experiment.id)

    assert record.state is ExperimentState.SUCCEEDED
    assert record.completed_samples == 4
    assert await _warnings(engine, record.id) == []
