"""The sandbox-sdk command line, run with typer's CliRunner against the fake gateway."""

from __future__ import annotations

import json
import sys
import types

import pytest
from sdk_fake_gateway import API_KEY, FakeGateway, FakeServer
from typer.testing import CliRunner

from sandbox_sdk.cli.exit_codes import exit_code_for
from sandbox_sdk.cli.main import app
from sandbox_sdk.errors import NotFoundError, UnavailableError

runner = CliRunner()


@pytest.fixture
def cli(server: FakeServer, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SANDBOX_TARGET", server.target)
    monkeypatch.setenv("SANDBOX_API_KEY", API_KEY)
    monkeypatch.setenv("SANDBOX_RETRY_MAX_ATTEMPTS", "1")
    monkeypatch.delenv("SANDBOX_CONFIG", raising=False)

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(app, list(args))

    return invoke


def test_env_commands(cli, gateway: FakeGateway) -> None:  # type: ignore[no-untyped-def]
    created = cli("env", "create", "--memory", "256Mi", "--label", "team=a", "--env", "X=1")
    assert created.exit_code == 0, created.output
    environment_id = created.stdout.strip()
    assert gateway.environments[environment_id].spec.limits.memory_bytes == 256 * 1024**2
    listed = cli("env", "ls", "--label", "team=a")
    assert environment_id in listed.stdout
    ran = cli("env", "exec", environment_id, "--", "sh", "-c", "echo hi; exit 4")
    assert ran.exit_code == 4
    assert "hi" in ran.stdout
    checked = cli("env", "exec", "--check", environment_id, "--", "false")
    assert checked.exit_code == 16
    removed = cli("env", "rm", environment_id)
    assert removed.exit_code == 0
    assert f"deleted {environment_id}" in removed.stdout
    assert cli("env", "ls", "--json").stdout.strip() == ""


def test_run_follows_and_prints_results(cli, gateway: FakeGateway) -> None:  # type: ignore[no-untyped-def]
    result = cli(
        "run", "--model", "gpt-3", "-p", "hello", "-p", "bye", "--param", "temperature=0.5"
    )
    assert result.exit_code == 0, result.output
    assert "HELLO" in result.stdout
    assert "exact_match" in result.stdout
    spec = gateway.calls("CreateExperiment")[0].request.spec
    assert spec.parameters.temperature == 0.5
    assert all(env.state == 4 for env in gateway.environments.values())  # temp env deleted


def test_run_no_follow_then_logs_results_metrics(cli, gateway: FakeGateway) -> None:  # type: ignore[no-untyped-def]
    environment_id = cli("env", "create").stdout.strip()
    started = cli("run", "--model", "gpt-3", "-p", "a", "--env", environment_id, "--no-follow")
    assert started.exit_code == 0, started.output
    experiment_id = started.stdout.strip()
    logs = cli("logs", experiment_id)
    assert "done" in logs.stdout
    assert "SUCCEEDED" in logs.stdout
    as_json = cli("results", experiment_id, "--jsonl")
    assert json.loads(as_json.stdout.splitlines()[0])["output"] == "A"
    as_csv = cli("results", experiment_id, "--csv")
    assert as_csv.stdout.splitlines()[0].startswith("input_index,repeat")
    table = cli("results", experiment_id, "--samples")
    assert "exact_match" in table.stdout
    assert "latency_seconds" in cli("metrics", experiment_id).stdout
    assert cli("compare", experiment_id, experiment_id).exit_code == 0


def test_failed_experiment_exit_code(cli, gateway: FakeGateway) -> None:  # type: ignore[no-untyped-def]
    gateway.auto_complete = False
    environment_id = cli("env", "create").stdout.strip()
    experiment_id = cli(
        "run", "--model", "gpt-3", "-p", "a", "--env", environment_id, "--no-follow"
    ).stdout.strip()
    gateway.finish(experiment_id, state=4, reason="MODEL_ERROR")
    result = cli("results", experiment_id)
    assert result.exit_code == 13
    assert "MODEL_ERROR" in result.output


def test_models_and_keys(cli) -> None:  # type: ignore[no-untyped-def]
    assert "smollm2" in cli("models").stdout
    created = cli("keys", "create", "--tenant", "t1", "--scope", "read", "--name", "ci")
    assert created.exit_code == 0, created.output
    assert created.stdout.strip().startswith("key1.")
    assert "key1" in cli("keys", "ls").stdout
    assert cli("keys", "revoke", "key1").exit_code == 0
    assert cli("keys", "revoke", "nope").exit_code == 6


def test_error_exit_codes(cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    missing = cli("env", "rm", "env-o1-ffffffffffffffff")
    assert missing.exit_code == exit_code_for(NotFoundError("x")) == 6
    assert "not found" in missing.output
    monkeypatch.setenv("SANDBOX_TARGET", "127.0.0.1:9")
    down = cli("models")
    assert down.exit_code == exit_code_for(UnavailableError("x")) == 12
    assert "sandbox-sdk serve" in down.output
    monkeypatch.setenv("SANDBOX_TIMEOUT", "-1")
    assert cli("models").exit_code == 3


def test_serve_calls_the_embedded_server_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []
    fake = types.ModuleType("sandbox_sdk.server.embedded")
    fake.serve_embedded = lambda **kw: calls.append(kw)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sandbox_sdk.server.embedded", fake)
    result = runner.invoke(app, ["serve", "--port", "6000"])
    assert result.exit_code == 0, result.output
    assert calls == [{"host": "127.0.0.1", "port": 6000, "data_dir": None, "config_path": None}]
