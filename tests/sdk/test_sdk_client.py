"""The public API end to end against a real gRPC server: environments, commands, files,
experiments, results, comparisons, models, API keys, typed errors."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import grpc
import pytest
from sdk_drivers import Driver
from sdk_fake_gateway import API_KEY, Failure, FakeGateway, FakeServer

from sandbox_sdk import (
    AsyncSandboxClient,
    CommandFailedError,
    ExperimentFailedError,
    ExperimentState,
    InvalidArgumentError,
    NotFoundError,
    QuotaExceededError,
    SandboxClient,
    UnavailableError,
)
from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.models import ApiKeyScope, EnvironmentState, ExitReason, Regex


def test_readme_example_runs_verbatim(server: FakeServer, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "config.yaml").write_text(f"target: {server.target}\napi_key: {API_KEY}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SANDBOX_API_KEY", raising=False)
    from sandbox_sdk import SandboxClient

    client = SandboxClient(config_path="config.yaml")
    sandbox = client.create_environment()
    experiment = sandbox.run_experiment(
        model="gpt-3", prompt="Hello, world!", parameters={"temperature": 0.7}
    )
    results = experiment.get_results()
    assert results.samples[0].output == "HELLO, WORLD!"
    assert results.experiment.state is ExperimentState.SUCCEEDED
    client.close()


def test_environment_lifecycle(gateway: FakeGateway, client: SandboxClient) -> None:
    with client.create_environment(
        cpu=0.5,
        memory="512Mi",
        disk="1Gi",
        pids=64,
        ttl="10m",
        idle_timeout=60,
        env={"A": "1"},
        labels={"team": "x"},
        files={"data/in.txt": "hello"},
        network="none",
    ) as sandbox:
        request = gateway.calls("CreateEnvironment")[0].request
        assert request.spec.limits.memory_bytes == 512 * 1024**2
        assert request.spec.limits.disk_bytes == 1024**3
        assert request.spec.ttl.seconds == 600
        assert request.spec.network_policy == 1
        assert sandbox.info.limits.cpu_cores == 0.5
        assert sandbox.read_text("data/in.txt") == "hello"
        updated = sandbox.update(labels={"team": "y"}, ttl="1h")
        assert updated.labels == {"team": "y"}
        assert list(gateway.calls("UpdateEnvironment")[0].request.update_mask.paths) == [
            "labels",
            "ttl",
        ]
        assert sandbox.refresh().state is EnvironmentState.RUNNING
    assert gateway.environments[sandbox.id].state == 4  # deleted by the context manager
    assert sandbox.info.state is EnvironmentState.TERMINATED


def test_listing_pages_transparently(gateway: FakeGateway, driver: Driver) -> None:
    created = [driver.create_environment(labels={"batch": "b"}).id for _ in range(5)]
    driver.create_environment(labels={"batch": "other"})
    listed = driver.list_environment_ids(labels={"batch": "b"}, page_size=2)
    assert listed == created
    assert len(gateway.calls("ListEnvironments")) == 3


def test_exec_collects_output_and_checks(driver: Driver) -> None:
    environment_id = driver.create_environment().id
    result = driver.exec(environment_id, "echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.reason is ExitReason.EXITED
    assert result.argv == ("/bin/sh", "-c", "echo out; echo err >&2; exit 3")
    with pytest.raises(CommandFailedError, match="exited with status 3") as caught:
        result.check()
    assert caught.value.result is result
    ok = driver.exec(environment_id, ["echo", "a b"], check=True)
    assert ok.ok
    assert ok.stdout == "a b\n"


def test_exec_stream_yields_chunks_then_result(client: SandboxClient) -> None:
    sandbox = client.create_environment()
    stream = sandbox.exec_stream(["printf", "a\\nb\\n"])
    chunks = [chunk.text for chunk in stream]
    assert chunks == ["a\n", "b\n"]
    assert stream.result().exit_code == 0


def test_what_were_properties_still_read_as_values_with_a_warning(
    gateway: FakeGateway, client: SandboxClient
) -> None:
    sandbox = client.create_environment()
    stream = sandbox.exec_stream(["printf", "a"])
    with pytest.warns(DeprecationWarning, match=r"ExecStream\.result is a method now"):
        assert stream.result.exit_code == 0
    gateway.auto_complete = False
    experiment = sandbox.run_experiment(model="gpt-3", prompt="x")
    with pytest.warns(DeprecationWarning, match=r"write \.status\(\)"):
        assert experiment.status == ExperimentState.QUEUED
    with pytest.warns(DeprecationWarning, match=r"Experiment\.state is a method now"):
        assert str(experiment.state) == str(ExperimentState.QUEUED)
    assert experiment.status() is ExperimentState.QUEUED


def test_files_and_usage(client: SandboxClient) -> None:
    sandbox = client.create_environment(memory="64Mi")
    info = sandbox.write_file("b.txt", b"\x00\x01", mode=0o600)
    assert (info.path, info.size_bytes, info.mode) == ("b.txt", 2, 0o600)
    sandbox.write_file("a.txt", "text")
    assert sandbox.read_file("b.txt") == b"\x00\x01"
    assert [f.path for f in sandbox.list_files(page_size=1)] == ["a.txt", "b.txt"]
    report = sandbox.usage()
    assert report.usage.cpu_seconds == 1.5
    assert report.limits.memory_bytes == 64 * 1024**2
    assert [u.cpu_seconds for u in sandbox.stream_usage(interval="200ms")] == [0.0, 1.0, 2.0]


def test_experiment_request_mapping(gateway: FakeGateway, client: SandboxClient) -> None:
    sandbox = client.create_environment()
    sandbox.run_experiment(
        model="gpt-3",
        inputs=[{"prompt": "a", "expected": "A"}, "b"],
        parameters={
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 16,
            "seed": 7,
            "stop": "\n",
            "repeat_penalty": 1.1,
        },
        scorers=[
            "exact_match",
            {"regex": "^A"},
            {"command": ["python3", "s.py"], "timeout": 5},
            Regex("x", name="has_x"),
        ],
        repeats=2,
        system_prompt="be brief",
        timeout="5m",
        priority=3,
        labels={"k": "v"},
        fail_on_scorer_error=True,
    )
    spec = gateway.calls("CreateExperiment")[0].request.spec
    assert spec.fail_on_scorer_error
    assert [i.expected for i in spec.inputs] == ["A", ""]
    assert spec.parameters.temperature == 0.2
    assert spec.parameters.max_tokens == 16
    assert list(spec.parameters.stop) == ["\n"]
    assert spec.parameters.extra["repeat_penalty"].number_value == 1.1
    assert [s.WhichOneof("kind") for s in spec.scorers] == [
        "exact_match",
        "regex",
        "command",
        "regex",
    ]
    assert spec.scorers[3].name == "has_x"
    assert spec.scorers[2].command.timeout.seconds == 5
    assert (spec.repeats, spec.timeout.seconds, spec.priority) == (2, 300, 3)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": "a", "prompts": ["b"]}, "spec.inputs"),
        ({}, "spec.inputs"),
        ({"prompt": "a", "parameters": {"temperature": "hot"}}, "spec.parameters.temperature"),
        ({"prompt": "a", "scorers": ["bleu"]}, "spec.scorers[0]"),
        ({"prompt": "a", "parameters": {"odd": object()}}, "spec.parameters.odd"),
    ],
)
def test_bad_experiment_arguments_fail_before_any_call(
    gateway: FakeGateway, client: SandboxClient, kwargs: dict[str, object], field: str
) -> None:
    sandbox = client.create_environment()
    with pytest.raises(InvalidArgumentError) as caught:
        sandbox.run_experiment(model="gpt-3", **kwargs)  # type: ignore[arg-type]
    assert caught.value.field_violations[0].field == field
    assert gateway.calls("CreateExperiment") == []


def test_bad_size_is_rejected_locally(client: SandboxClient) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_environment(memory="lots")
    assert caught.value.field_violations[0].field == "spec.limits.memory_bytes"


def test_server_field_violations_become_typed_errors(driver: Driver) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        driver.create_environment(memory=1000)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == ErrorReason.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in error.field_violations] == [
        ("spec.limits.memory_bytes", "at least 1Mi; raise memory=")
    ]
    assert error.request_id == "req-fake-1"


def test_quota_failure_becomes_quota_exceeded(gateway: FakeGateway, driver: Driver) -> None:
    gateway.fail(
        "CreateEnvironment",
        Failure(
            1,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            ErrorReason.QUOTA_EXCEEDED,
            "environment quota reached; delete some",
            quota_violations=(("tenant:default/environments", "10 of 10 in use"),),
        ),
    )
    with pytest.raises(QuotaExceededError) as caught:
        driver.create_environment(retry=_no_retry())
    assert caught.value.quota_violations[0].subject == "tenant:default/environments"
    assert "10 of 10 in use" in str(caught.value)


def _no_retry():  # type: ignore[no-untyped-def]
    from sandbox_sdk import RetryPolicy

    return RetryPolicy.disabled()


def test_not_found_is_typed(driver: Driver) -> None:
    with pytest.raises(NotFoundError) as caught:
        driver.get_environment("env-o1-ffffffffffffffff")
    assert caught.value.reason == ErrorReason.ENVIRONMENT_NOT_FOUND


def test_unreachable_gateway_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox_sdk import RetryPolicy

    with (
        SandboxClient(
            "127.0.0.1:9", api_key=API_KEY, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01)
        ) as client,
        pytest.raises(UnavailableError) as caught,
    ):
        client.list_models()
    assert "sandbox-sdk serve" in str(caught.value)
    assert "127.0.0.1:9" in str(caught.value)


def test_results_wait_export_and_compare(client: SandboxClient, tmp_path: Path) -> None:
    sandbox = client.create_environment()
    first = sandbox.run_experiment(
        model="gpt-3",
        inputs=[{"prompt": "a", "expected": "A"}, {"prompt": "b", "expected": "x"}],
        repeats=2,
    )
    second = sandbox.run_experiment(
        model="gpt-3",
        inputs=[{"prompt": "a", "expected": "A"}, {"prompt": "b", "expected": "B"}],
        repeats=2,
    )
    results = first.get_results()
    assert len(results.samples) == 4
    assert results.values("exact_match") == [1.0, 1.0, 0.0, 0.0]
    assert results.total_usage.total_tokens == 4 * 3 + 4 + 5 + 4 + 5
    lines = results.to_jsonl(tmp_path / "r.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["output"] == "A"
    rows = list(csv.DictReader(results.to_csv(tmp_path / "r.csv").open()))
    assert rows[2]["score:exact_match"] == "0.0"
    comparison = client.compare_experiments(first, second.id)
    exact = comparison["exact_match"]
    assert (exact.mean_a, exact.mean_b, exact.difference) == (0.5, 1.0, 0.5)
    assert exact.significant is False  # two noisy samples per side cannot tell
    assert comparison["latency_seconds"].count_a == 4
    assert results.to_table().row_count == 1
    assert comparison.to_table().row_count == len(comparison.metrics)


def test_failed_experiment_raises_with_reason(gateway: FakeGateway, driver: Driver) -> None:
    gateway.auto_complete = False
    environment_id = driver.create_environment().id
    experiment_id = driver.run_experiment(environment_id, model="gpt-3", prompt="x").id
    gateway.finish(experiment_id, state=4, reason="MODEL_ERROR")
    with pytest.raises(ExperimentFailedError, match="MODEL_ERROR") as caught:
        driver.results(experiment_id)
    assert caught.value.reason == "MODEL_ERROR"
    partial = driver.results(experiment_id, raise_on_failure=False)
    assert partial.experiment.state is ExperimentState.FAILED


def test_wait_times_out_with_advice(gateway: FakeGateway, client: SandboxClient) -> None:
    from sandbox_sdk import SandboxTimeoutError

    gateway.auto_complete = False
    experiment = client.create_environment().run_experiment(model="gpt-3", prompt="x")
    with pytest.raises(SandboxTimeoutError, match="still QUEUED"):
        experiment.wait(timeout=0.3)
    assert experiment.status() is ExperimentState.QUEUED
    assert experiment.cancel().state is ExperimentState.CANCELLED


def test_logs_and_metrics_iterators(client: SandboxClient) -> None:
    experiment = client.create_environment().run_experiment(model="gpt-3", prompts=["a", "b"])
    assert [line.message for line in experiment.stream_logs()] == ["done"]
    assert [m.input_index for m in experiment.stream_metrics(follow=False)] == [0, 1]


def test_models_and_api_keys(client: SandboxClient) -> None:
    assert client.list_models()[0].aliases == ("gpt-3",)
    created = client.create_api_key(tenant="team-a", scopes=["read"], display_name="ci", ttl="30d")
    assert created.key.scopes == (ApiKeyScope.READ,)
    assert created.secret not in repr(created)
    with SandboxClient(client.settings.target, api_key=created.secret) as as_team:
        assert as_team.list_models()
    assert [k.id for k in client.list_api_keys()] == [created.key.id]
    revoked = client.revoke_api_key(created.key.id)
    assert revoked.revoke_time is not None
    assert not revoked.active
    assert list(client.list_api_keys()) == []


def test_prometheus_metrics_record_calls(gateway: FakeGateway, server: FakeServer) -> None:
    from prometheus_client import REGISTRY

    def count(code: str) -> float:
        value = REGISTRY.get_sample_value(
            "sandbox_client_rpc_duration_seconds_count", {"method": "ListModels", "code": code}
        )
        return value or 0.0

    before = count("OK")
    with SandboxClient(server.target, api_key=API_KEY) as plain:
        plain.list_models()
    assert count("OK") == before  # off by default
    os.environ["SANDBOX_METRICS_PROMETHEUS"] = "true"
    try:
        with SandboxClient(server.target, api_key=API_KEY) as observed:
            observed.list_models()
    finally:
        del os.environ["SANDBOX_METRICS_PROMETHEUS"]
    assert count("OK") == before + 1


async def test_async_client_surface(aclient: AsyncSandboxClient) -> None:
    async with await aclient.create_environment(files={"f": "x"}) as sandbox:
        assert await sandbox.read_text("f") == "x"
        assert [f.path async for f in sandbox.list_files()] == ["f"]
        stream = sandbox.exec_stream(["echo", "hi"])
        assert [c.text async for c in stream] == ["hi\n"]
        assert (await stream.result()).exit_code == 0
        experiment = await sandbox.run_experiment(model="gpt-3", prompt="hey")
        assert await experiment.status() is ExperimentState.SUCCEEDED
        assert [line.message async for line in experiment.stream_logs()] == ["done"]
        results = await experiment.get_results()
        assert results.outputs == ["HEY"]
        assert [m.name for m in await aclient.list_models()] == ["smollm2"]
        assert [s.id async for s in aclient.list_environments()] == [sandbox.id]
    assert sandbox.info.state is EnvironmentState.TERMINATED
