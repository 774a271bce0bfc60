"""The engine with the scripted provider: runs, scores, retries, timeouts, cancels, results."""

from __future__ import annotations

from google.protobuf import duration_pb2

from sandbox_sdk.api.v1 import experiment_pb2, requests_pb2
from sandbox_sdk.server.orchestrator.experiments import ExperimentHandlers, ExperimentSettings
from sandbox_sdk.server.orchestrator.experiments.records import (
    ExperimentState,
    LogEvent,
    MetricEvent,
    OutputEvent,
    StateEvent,
)
from sandbox_sdk.server.orchestrator.experiments.settings import SchedulerSettings

from .conftest import EngineFactory, TenantContext
from .exp_support import (
    SubprocessSandbox,
    create_request,
    eventually,
    make_spec,
    process_exists,
    scripted_model,
    wait_final,
)

CTX = TenantContext()


async def test_an_experiment_streams_scores_and_aggregates(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    handlers = ExperimentHandlers(engine)
    environment = sandbox.create()
    spec = make_spec(["The answer is 42"], expected=["42"], repeats=3, seed=7, temperature=0.5)
    spec.scorers.add(name="has_answer").contains.SetInParent()
    spec.scorers.add().exact_match.ignore_case = True
    spec.scorers.add().regex.pattern = r"\d+"
    spec.scorers.add().json_valid.SetInParent()
    created = await handlers.CreateExperiment(create_request(environment, spec), CTX)
    assert created.experiment.total_samples == 3

    record = await wait_final(engine, created.experiment.id)

    assert record.state is ExperimentState.SUCCEEDED
    assert record.completed_samples == 3
    results = await handlers.GetExperimentResults(
        requests_pb2.GetExperimentResultsRequest(experiment_id=record.id), CTX
    )
    assert [(s.input_index, s.repeat, s.seed) for s in results.samples] == [
        (0, 0, 7),
        (0, 1, 8),
        (0, 2, 9),
    ]
    sample = results.samples[0]
    assert sample.output == "The answer is 42"
    assert dict(sample.scores) == {
        "has_answer": 1.0,
        "exact_match": 0.0,
        "regex": 1.0,
        "json_valid": 0.0,
    }
    assert sample.usage.completion_tokens == 4
    assert sample.finish_reason == "stop"
    metrics = {m.name: m for m in results.metrics}
    assert metrics["has_answer"].count == 3
    assert metrics["has_answer"].mean == 1.0
    # One input repeated three times is one cluster: no interval can be made from it.
    latency = metrics["latency_seconds"]
    assert (latency.inputs, latency.repeats, latency.count) == (1, 3, 3)
    assert latency.interval_method == experiment_pb2.INTERVAL_METHOD_NONE
    assert not latency.HasField("ci_low")
    assert not latency.HasField("standard_error")
    assert results.total_usage.completion_tokens == 12
    assert sandbox.environments[environment].touches == 3


async def test_events_are_numbered_without_gaps_and_cover_the_run(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    environment = sandbox.create()
    created = await ExperimentHandlers(engine).CreateExperiment(
        create_request(environment, make_spec(["one two three"])), CTX
    )

    await wait_final(engine, created.experiment.id)
    events = [e async for e in engine.stream("default", created.experiment.id, 0, follow=False)]

    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    states = [e.payload.state for e in events if isinstance(e.payload, StateEvent)]
    assert states == [ExperimentState.QUEUED, ExperimentState.RUNNING, ExperimentState.SUCCEEDED]
    text = "".join(e.payload.text for e in events if isinstance(e.payload, OutputEvent))
    assert text == "one two three"
    metric_names = {e.payload.name for e in events if isinstance(e.payload, MetricEvent)}
    assert metric_names == {
        "latency_seconds",
        "time_to_first_token_seconds",
        "tokens_per_second",
        "prompt_tokens",
        "completion_tokens",
        "env_cpu_percent",
        "env_memory_bytes",
    }
    assert (await engine.get("default", created.experiment.id)).last_sequence == events[-1].sequence


async def test_failing_scorer_commands_are_recorded_not_fatal(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    handlers = ExperimentHandlers(engine)
    environment = sandbox.create()
    spec = make_spec(["hello"], expected=["hello"])
    commands = {
        "good": ["sh", "-c", 'test "$(cat)" = "$EXPECTED" && echo 1 || echo 0'],
        "crash": ["sh", "-c", "echo boom >&2; exit 3"],
        "garbage": ["sh", "-c", "echo not-a-number"],
        "huge": ["sh", "-c", "yes 1 | head -c 100000"],
    }
    for name, argv in commands.items():
        spec.scorers.add(name=name).command.argv.extend(argv)
    slow = spec.scorers.add(name="slow").command
    slow.argv.extend(["sleep", "30"])
    slow.timeout.FromMilliseconds(300)
    created = await handlers.CreateExperiment(create_request(environment, spec), CTX)

    record = await wait_final(engine, created.experiment.id)

    assert record.state is ExperimentState.SUCCEEDED
    results = await handlers.GetExperimentResults(
        requests_pb2.GetExperimentResultsRequest(experiment_id=record.id), CTX
    )
    sample = results.samples[0]
    assert dict(sample.scores) == {"good": 1.0}
    errors = dict(sample.score_errors)
    assert "exited with code 3: boom" in errors["crash"]
    assert "not a number" in errors["garbage"]
    assert "more than 4096 bytes" in errors["huge"]
    assert "timed out" in errors["slow"]
    logs = [
        e.payload.message
        async for e in engine.stream("default", record.id, 0, follow=False)
        if isinstance(e.payload, LogEvent)
    ]
    assert any("scorer crash" in line for line in logs)


async def test_transient_model_errors_are_retried(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    model = scripted_model(
        faults=[
            {"kind": "rate_limit", "seconds": 0.01},
            {"kind": "mid_stream", "after_chunks": 1},
            {"kind": "timeout", "seconds": 0.01},
        ]
    )
    engine = await make_engine(ExperimentSettings(models=[model]))
    environment = sandbox.create()
    created = await ExperimentHandlers(engine).CreateExperiment(
        create_request(environment, make_spec(["a b c"], model="scripted", repeats=2)), CTX
    )

    record = await wait_final(engine, created.experiment.id)

    assert record.state is ExperimentState.SUCCEEDED
    samples = engine.store.samples(record.id)
    assert [s.output for s in samples] == ["a b c", "a b c"]
    assert [s.error for s in samples] == ["", ""]
    warnings = [
        e.payload.message
        async for e in engine.stream("default", record.id, 0, follow=False)
        if isinstance(e.payload, LogEvent)
    ]
    assert sum("retrying" in w for w in warnings) == 3
    assert any("replaces the text streamed so far" in w for w in warnings)


async def test_exhausted_retries_fail_the_sample_and_an_all_failed_experiment(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    model = scripted_model(faults=[{"kind": "rate_limit", "calls": 4}, {"kind": "error"}])
    engine = await make_engine(ExperimentSettings(models=[model]))
    environment = sandbox.create()
    created = await ExperimentHandlers(engine).CreateExperiment(
        create_request(environment, make_spec(["x"], model="scripted", repeats=2)), CTX
    )

    record = await wait_final(engine, created.experiment.id)

    assert record.state is ExperimentState.FAILED
    assert record.failure is not None
    assert record.failure.reason == "MODEL_ERROR"
    errors = [s.error for s in engine.store.samples(record.id)]
    assert "after 4 attempt(s)" in errors[0]
    assert "after 1 attempt(s)" in errors[1]


async def test_timeout_ends_the_experiment_timed_out(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine(
        ExperimentSettings(models=[scripted_model(faults=[{"kind": "latency", "seconds": 60}])])
    )
    environment = sandbox.create()
    spec = make_spec(["slow"], model="scripted")
    spec.timeout.FromMilliseconds(200)
    created = await ExperimentHandlers(engine).CreateExperiment(
        create_request(environment, spec), CTX
    )

    record = await wait_final(engine, created.experiment.id)

    assert record.state is ExperimentState.TIMED_OUT
    assert record.failure is not None
    assert record.failure.reason == "TIMEOUT"


async def test_cancel_queued_and_running_experiments(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine(
        ExperimentSettings(
            models=[scripted_model(faults=[{"kind": "latency", "seconds": 60, "calls": 5}])],
            scheduler=SchedulerSettings(max_concurrent=1),
        )
    )
    handlers = ExperimentHandlers(engine)
    environment = sandbox.create()
    spec = make_spec(["wait"], model="scripted")
    spec.scorers.add().command.argv.extend(["sleep", "60"])
    running = (await handlers.CreateExperiment(create_request(environment, spec), CTX)).experiment
    queued = (await handlers.CreateExperiment(create_request(environment, spec), CTX)).experiment
    assert running.state == experiment_pb2.EXPERIMENT_STATE_RUNNING
    assert queued.state == experiment_pb2.EXPERIMENT_STATE_QUEUED
    assert queued.queue_position == 1

    cancel = requests_pb2.CancelExperimentRequest
    cancelled_queued = await handlers.CancelExperiment(cancel(experiment_id=queued.id), CTX)
    cancelled_running = await handlers.CancelExperiment(cancel(experiment_id=running.id), CTX)
    again = await handlers.CancelExperiment(cancel(experiment_id=running.id), CTX)

    for response in (cancelled_queued, cancelled_running, again):
        assert response.experiment.state == experiment_pb2.EXPERIMENT_STATE_CANCELLED
        assert response.experiment.failure.reason == "CANCELLED"
    assert engine.capacity() == (0, 0)


async def test_cancel_kills_a_running_scorer_command(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    handlers = ExperimentHandlers(engine)
    environment = sandbox.create()
    spec = make_spec(["x"])
    spec.scorers.add().command.argv.extend(["sh", "-c", "echo $$ > scorer.pid; exec sleep 60"])
    created = await handlers.CreateExperiment(create_request(environment, spec), CTX)
    pid_file = sandbox.environments[environment].workspace / "scorer.pid"
    await eventually(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    pid = int(pid_file.read_text())

    cancelled = await handlers.CancelExperiment(
        requests_pb2.CancelExperimentRequest(experiment_id=created.experiment.id), CTX
    )

    assert cancelled.experiment.state == experiment_pb2.EXPERIMENT_STATE_CANCELLED
    await eventually(lambda: not process_exists(pid))


async def test_a_terminated_environment_cancels_its_experiments(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine(
        ExperimentSettings(
            models=[scripted_model(faults=[{"kind": "latency", "seconds": 60}])],
            scheduler=SchedulerSettings(max_concurrent=1),
        )
    )
    handlers = ExperimentHandlers(engine)
    environment = sandbox.create()
    spec = make_spec(["x"], model="scripted")
    first = (await handlers.CreateExperiment(create_request(environment, spec), CTX)).experiment
    second = (await handlers.CreateExperiment(create_request(environment, spec), CTX)).experiment

    sandbox.terminate(environment)
    records = [await wait_final(engine, e.id) for e in (first, second)]

    for record in records:
        assert record.state is ExperimentState.CANCELLED
        assert record.failure is not None
        assert record.failure.reason == "ENVIRONMENT_NOT_RUNNING"


async def test_dataset_file_inputs_and_bad_datasets(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    handlers = ExperimentHandlers(engine)
    environment = sandbox.create()
    workspace = sandbox.environments[environment].workspace
    (workspace / "data.jsonl").write_text(
        '{"prompt": "alpha", "expected": "alpha"}\n\n{"prompt": "beta"}\n'
    )
    (workspace / "bad.jsonl").write_text('{"prompt": "ok"}\nnot json\n')
    spec = experiment_pb2.ExperimentSpec(model="echo", dataset_path="data.jsonl", repeats=2)
    spec.scorers.add().exact_match.SetInParent()

    good = await handlers.CreateExperiment(create_request(environment, spec), CTX)
    spec.dataset_path = "bad.jsonl"
    bad = await handlers.CreateExperiment(create_request(environment, spec), CTX)
    spec.dataset_path = "missing.jsonl"
    missing = await handlers.CreateExperiment(create_request(environment, spec), CTX)

    record = await wait_final(engine, good.experiment.id)
    assert record.state is ExperimentState.SUCCEEDED
    assert record.total_samples == 4
    assert [s.scores["exact_match"] for s in engine.store.samples(record.id)] == [1, 1, 0, 0]
    bad_record = await wait_final(engine, bad.experiment.id)
    assert bad_record.failure is not None
    assert "line 2 of bad.jsonl is not JSON" in bad_record.failure.message
    missing_record = await wait_final(engine, missing.experiment.id)
    assert missing_record.failure is not None
    assert missing_record.failure.reason == "FILE_NOT_FOUND"


async def test_request_id_makes_create_idempotent_per_tenant(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    handlers = ExperimentHandlers(engine)
    environment = sandbox.create()
    other_environment = sandbox.create("other")
    request = create_request(environment, make_spec(), request_id="6f1c0b2e-retry")

    first = await handlers.CreateExperiment(request, CTX)
    second = await handlers.CreateExperiment(request, CTX)
    other = await handlers.CreateExperiment(
        create_request(other_environment, make_spec(), request_id="6f1c0b2e-retry"),
        TenantContext("other"),
    )

    assert first.experiment.id == second.experiment.id
    assert other.experiment.id != first.experiment.id


async def test_listing_filters_and_pages(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    handlers = ExperimentHandlers(engine)
    environment = sandbox.create()
    created = []
    for index in range(5):
        spec = make_spec()
        spec.labels["team"] = "red" if index % 2 == 0 else "blue"
        created.append(
            (await handlers.CreateExperiment(create_request(environment, spec), CTX)).experiment.id
        )
    for experiment_id in created:
        await wait_final(engine, experiment_id)

    seen: list[str] = []
    token = ""
    while True:
        page = await handlers.ListExperiments(
            requests_pb2.ListExperimentsRequest(
                page_size=2, page_token=token, label_selector={"team": "red"}
            ),
            CTX,
        )
        seen += [e.id for e in page.experiments]
        token = page.next_page_token
        if not token:
            break
    other_tenant = await handlers.ListExperiments(
        requests_pb2.ListExperimentsRequest(), TenantContext("other")
    )
    succeeded = await handlers.ListExperiments(
        requests_pb2.ListExperimentsRequest(
            environment_id=environment, states=[experiment_pb2.EXPERIMENT_STATE_SUCCEEDED]
        ),
        CTX,
    )

    assert seen == [created[4], created[2], created[0]]
    assert list(other_tenant.experiments) == []
    assert len(succeeded.experiments) == 5


async def test_results_pages_keep_aggregates_over_all_samples(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    handlers = ExperimentHandlers(engine)
    environment = sandbox.create()
    spec = make_spec(["a", "b b", "c c c"], repeats=2)
    created = await handlers.CreateExperiment(create_request(environment, spec), CTX)
    await wait_final(engine, created.experiment.id)

    keys = []
    token = ""
    while True:
        page = await handlers.GetExperimentResults(
            requests_pb2.GetExperimentResultsRequest(
                experiment_id=created.experiment.id, page_size=4, page_token=token
            ),
            CTX,
        )
        keys += [(s.input_index, s.repeat) for s in page.samples]
        tokens = {m.name: m for m in page.metrics}["completion_tokens"]
        assert (tokens.count, tokens.mean) == (6, 2.0)
        token = page.next_page_token
        if not token:
            break

    assert keys == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]


async def test_list_models_and_the_gpt3_alias(
    make_engine: EngineFactory, sandbox: SubprocessSandbox
) -> None:
    engine = await make_engine()
    models = await ExperimentHandlers(engine).ListModels(requests_pb2.ListModelsRequest(), CTX)

    assert [(m.name, m.provider, list(m.aliases)) for m in models.models] == [
        ("scripted", "scripted", ["echo"]),
        ("smollm2", "local", ["local", "gpt-3"]),
    ]
    assert engine.models.resolve("gpt-3").config.default_system_prompt == (
        "You are a helpful assistant."
    )


def test_command_scorer_timeout_defaults_to_ten_seconds() -> None:
    from sandbox_sdk.server.orchestrator.experiments.providers.registry import ModelRegistry
    from sandbox_sdk.server.orchestrator.experiments.validation import validate_create

    spec = make_spec()
    spec.scorers.add().command.argv.append("true")
    validated = validate_create(
        create_request("env-t1-0123456789abcdef", spec),
        ModelRegistry(ExperimentSettings().models),
        SchedulerSettings(),
    )
    assert validated.spec.scorers[0].check.timeout_seconds == 10.0  # type: ignore[union-attr]
    assert duration_pb2.Duration  # the wire type of CommandScorer.timeout
