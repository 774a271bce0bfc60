"""The `sandbox-sdk` command line against the real server.

Most commands run in-process with typer's CliRunner; one runs the installed
entry point as a subprocess, as a user's shell would.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from e2e_support import BIN_DIR, EmbeddedStack, unique_tenant
from typer.testing import CliRunner, Result

from sandbox_sdk.cli.main import app

Cli = Callable[..., Result]


@pytest.fixture
def cli(stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Runs `sandbox-sdk ...` against the shared stack as a fresh tenant."""
    monkeypatch.setenv("SANDBOX_TARGET", stack.target)
    monkeypatch.setenv("SANDBOX_API_KEY", stack.tenant_key(unique_tenant("cli")))
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: no ellipsis in ids
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


@pytest.fixture
def admin_cli(stack: EmbeddedStack, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The same, with the admin key (tenant ``default``)."""
    monkeypatch.setenv("SANDBOX_API_KEY", stack.admin_key)
    return cli


def _json_documents(text: str) -> list[dict[str, Any]]:
    """Every JSON value in ``text``, however each is laid out over lines."""
    decoder = json.JSONDecoder()
    documents, position = [], 0
    while text[position:].strip():
        position += len(text[position:]) - len(text[position:].lstrip())
        document, position = decoder.raw_decode(text, position)
        documents.append(document)
    return documents


def _listed(cli: Cli, *options: str) -> dict[str, dict[str, Any]]:
    listed = cli("env", "ls", "--json", *options)
    assert listed.exit_code == 0, listed.output
    return {row["id"]: row for row in _json_documents(listed.stdout)}


def test_env_ls_json_prints_one_object_a_line(cli: Cli) -> None:
    created = [cli("env", "create", "--label", "n=1").stdout.strip() for _ in range(2)]
    try:
        lines = cli("env", "ls", "--json").stdout.splitlines()
        assert sorted(json.loads(line)["id"] for line in lines) == sorted(created)
    finally:
        cli("env", "rm", *created)


def test_environments_commands_and_experiments_end_to_end(cli: Cli) -> None:
    created = cli("env", "create", "--memory", "256Mi", "--label", "suite=e2e", "--env", "X=42")
    assert created.exit_code == 0, created.output
    environment_id = created.stdout.strip()
    assert re.fullmatch(r"env-o1-[0-9a-f]{16}", environment_id)
    try:
        listed = _listed(cli, "--label", "suite=e2e")
        assert listed[environment_id]["state"] == "RUNNING"
        assert listed[environment_id]["labels"] == {"suite": "e2e"}
        assert environment_id in cli("env", "ls").stdout

        ran = cli("env", "exec", environment_id, "--", "sh", "-c", 'echo "x=$X"; exit 3')
        assert ran.exit_code == 3, "env exec exits with the command's status"
        assert "x=42" in ran.stdout
        checked = cli("env", "exec", "--check", environment_id, "--", "false")
        assert checked.exit_code == 16

        run = cli("run", "--env", environment_id, "--model", "echo", "-p", "hello from the cli")
        assert run.exit_code == 0, run.output
        match = re.search(r"experiment (exp-o1-[0-9a-f]{16}) in " + environment_id, run.output)
        assert match, run.output
        experiment_id = match.group(1)
        assert "hello from the cli" in run.stdout

        results = cli("results", experiment_id, "--jsonl")
        assert results.exit_code == 0, results.output
        [sample] = [json.loads(line) for line in results.stdout.splitlines()]
        assert sample["experiment_id"] == experiment_id
        assert sample["output"] == "hello from the cli"
        assert sample["usage"]["completion_tokens"] > 0

        logs = cli("logs", experiment_id)
        assert logs.exit_code == 0, logs.output
        assert "SUCCEEDED" in logs.stdout
    finally:
        removed = cli("env", "rm", environment_id)
    assert removed.exit_code == 0, removed.output
    assert f"deleted {environment_id}" in removed.stdout
    assert environment_id not in _listed(cli)
    assert _listed(cli, "--all")[environment_id]["state"] == "TERMINATED"
    assert cli("env", "rm", environment_id).exit_code == 0, "deleting twice is fine"
    gone = cli("env", "exec", environment_id, "--", "true")
    assert gone.exit_code == 125, gone.output  # env exec's own failures: never the command's
    assert gone.output.count("error:") == 1, gone.output


def test_run_without_an_environment_makes_one_and_deletes_it(cli: Cli) -> None:
    run = cli("run", "--model", "echo", "-p", "temporary", "--param", "temperature=0.5")
    assert run.exit_code == 0, run.output
    assert "temporary" in run.stdout
    assert _listed(cli) == {}
    assert [row["state"] for row in _listed(cli, "--all").values()] == ["TERMINATED"]


def test_errors_map_to_exit_codes(cli: Cli) -> None:
    missing = cli("env", "rm", "env-o1-0123456789abcdef")
    assert missing.exit_code == 6, missing.output  # NotFoundError
    assert "not found" in missing.output
    invalid = cli("env", "create", "--cpu", "-1")
    assert invalid.exit_code == 7, invalid.output  # InvalidArgumentError
    assert "spec.limits.cpu_cores" in invalid.output
    unknown_model = cli("run", "--model", "gpt-5", "-p", "hi")
    assert unknown_model.exit_code == 6, unknown_model.output
    no_admin = cli("keys", "ls")
    assert no_admin.exit_code == 5, no_admin.output  # PermissionDeniedError
    bad_key = cli("--api-key", "sk_0123456789abcdef_nope", "env", "ls")
    assert bad_key.exit_code == 4, bad_key.output  # AuthenticationError
    # Only `run` made an environment (for the experiment it could not create) and deleted it.
    assert _listed(cli) == {}
    assert [row["state"] for row in _listed(cli, "--all").values()] == ["TERMINATED"]


def test_api_key_lifecycle(admin_cli: Cli) -> None:
    tenant = unique_tenant("cli-keys")
    created = admin_cli("keys", "create", "--tenant", tenant, "--scope", "read", "--name", "ci")
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    key_id = re.search(r"key (\S+) for tenant " + tenant, created.output)
    assert key_id, created.output
    listed = admin_cli("keys", "ls", "--tenant", tenant)
    assert key_id.group(1) in listed.stdout
    assert "read" in listed.stdout
    assert "active" in listed.stdout

    # The new key reads, but may not write.
    assert admin_cli("--api-key", secret, "env", "ls").exit_code == 0
    assert admin_cli("--api-key", secret, "env", "create").exit_code == 5

    revoked = admin_cli("keys", "revoke", key_id.group(1))
    assert revoked.exit_code == 0, revoked.output
    assert f"revoked {key_id.group(1)}" in revoked.stdout
    assert key_id.group(1) not in admin_cli("keys", "ls", "--tenant", tenant).stdout
    assert "revoked/expired" in admin_cli("keys", "ls", "--tenant", tenant, "--all").stdout
    rejected = admin_cli("--api-key", secret, "env", "ls")
    assert rejected.exit_code == 4, rejected.output  # revoked at once


def test_the_installed_command_exits_with_the_error_code(stack: EmbeddedStack) -> None:
    completed = subprocess.run(
        [
            str(BIN_DIR / "sandbox-sdk"),
            "--target",
            stack.target,
            "--api-key",
            stack.admin_key,
            "env",
            "rm",
            "env-o1-0123456789abcdef",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 6, completed.stderr
    assert "env-o1-0123456789abcdef" in completed.stderr
    assert "Traceback" not in completed.stderr
    models = subprocess.run(
        [
            str(BIN_DIR / "sandbox-sdk"),
            "--target",
            stack.target,
            "--api-key",
            stack.admin_key,
            "models",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert models.returncode == 0, models.stderr
    assert "smollm2" in models.stdout
