"""The `sandbox-sdk` command line does everything the SDK does, against the real server:
experiments and environment inspection, file copies, --json everywhere, env exec's stdin,
termination reasons and exit codes, Ctrl-C in a real terminal, `serve` on a busy port,
help and error wording, power analysis, plots and scorer-failure warnings."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pexpect
import pytest
import typer
from e2e_support import BIN_DIR, EmbeddedStack, free_port, unique_tenant
from typer.testing import CliRunner, Result

import sandbox_sdk
from sandbox_sdk import ExperimentState
from sandbox_sdk.cli.main import app

Cli = Callable[..., Result]

LONG_PROMPT = " ".join(f"word{i}" for i in range(400))
SLOW_CONFIG = {
    "orchestrator": {
        "experiments": {
            "models": [
                {"name": "slow", "provider": "scripted", "options": {"chunk_delay_seconds": 0.05}},
                {"name": "echo", "provider": "scripted"},
            ]
        }
    }
}
FAILING_SCORER = json.dumps({"name": "picky", "command": ["sh", "-c", "echo boom >&2; exit 3"]})


def _invoker(stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("SANDBOX_TARGET", stack.target)
    monkeypatch.setenv("SANDBOX_API_KEY", stack.tenant_key(unique_tenant("cli")))
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: no ellipsis in ids
    runner = CliRunner()

    def invoke(*args: str, stdin: str | bytes | None = None) -> Result:
        return runner.invoke(app, list(args), input=stdin, catch_exceptions=False)

    return invoke


def _created(cli: Cli, *options: str) -> str:
    created = cli("env", "create", *options)
    assert created.exit_code == 0, created.output
    return created.stdout.strip()


@pytest.fixture
def cli(stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`sandbox-sdk ...` in-process against the shared stack, as a fresh tenant."""
    return _invoker(stack, monkeypatch)


@pytest.fixture
def slow_stack(start_stack: Callable[[dict[str, Any]], EmbeddedStack]) -> EmbeddedStack:
    """A stack whose model ``slow`` writes a word every 50 ms: experiments that last."""
    return start_stack(SLOW_CONFIG)


@pytest.fixture
def slow_cli(slow_stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch) -> Cli:
    return _invoker(slow_stack, monkeypatch)


@pytest.fixture
def environment(cli: Cli) -> Iterator[str]:
    """An environment of the ``cli`` tenant with 256 MiB of memory, deleted afterwards."""
    environment_id = _created(cli, "--memory", "256Mi")
    yield environment_id
    cli("env", "rm", environment_id)


def test_version_is_the_installed_distribution_s() -> None:
    printed = CliRunner().invoke(app, ["--version"])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout.strip() == f"sandbox-sdk {metadata.version('sandbox-sdk')}"
    assert sandbox_sdk.__version__ == metadata.version("sandbox-sdk")


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, child in getattr(command, "commands", {}).items():
        yield from _command_paths(child, (*path, name))


def test_help_shows_flags_as_flags_and_values_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    paths = list(_command_paths(typer.main.get_command(app)))
    assert ("experiments", "cancel") in paths
    assert ("env", "cp") in paths
    assert ("power",) in paths
    for path in paths:
        shown = CliRunner().invoke(app, [*path, "--help"])
        assert shown.exit_code == 0, (path, shown.output)
        assert "<bool>" not in shown.stdout, path
    create = CliRunner().invoke(app, ["env", "create", "--help"]).stdout
    assert re.search(r"--memory\s+SIZE", create), create
    assert re.search(r"--label\s+-l\s+KEY=VALUE", create), create


def test_misspelt_options_and_parameters_are_answered_with_a_suggestion(cli: Cli) -> None:
    misspelt = cli("env", "create", "--memroy", "1Gi")
    assert misspelt.exit_code == 2
    assert "did you mean --memory?" in misspelt.output
    global_after = cli("env", "ls", "--target", "127.0.0.1:1")
    assert global_after.exit_code == 2
    assert "--target is an option of sandbox-sdk itself" in global_after.output
    parameter = cli("run", "--model", "echo", "-p", "hi", "--param", "temprature=0.5")
    assert "did you mean temperature?" in parameter.stderr
    # The echo model takes no other parameters: the server's refusal follows, said once.
    assert parameter.exit_code == 7, parameter.output
    assert parameter.output.count("error:") == 1
    assert parameter.output.count("does not know 'temprature'") == 1


def test_repeats_must_be_at_least_one(cli: Cli) -> None:
    zero = cli("run", "--model", "echo", "-p", "hi", "--repeats", "0")
    assert zero.exit_code == 2
    assert "--repeats" in zero.output
    assert "greater than or equal to 1" in zero.output
    listed = cli("env", "ls", "--all", "--json")
    assert listed.stdout.strip() == "", "rejected before any environment was made"


def test_env_get_usage_and_ls_show_sizes_and_json(cli: Cli, environment: str) -> None:
    shown = cli("env", "get", environment)
    assert shown.exit_code == 0, shown.output
    assert "256.0Mi" in shown.stdout
    assert "RUNNING" in shown.stdout
    info = json.loads(cli("env", "get", environment, "--json").stdout)
    assert info["id"] == environment
    assert info["limits"]["memory_bytes"] == 256 * 1024**2

    usage = cli("env", "usage", environment)
    assert usage.exit_code == 0, usage.output
    assert "256.0Mi" in usage.stdout
    report = json.loads(cli("env", "usage", environment, "--json").stdout)
    assert report["limits"]["memory_bytes"] == 256 * 1024**2
    assert report["usage"]["memory_bytes"] >= 0

    assert "256.0Mi" in cli("env", "ls").stdout
    [row] = [json.loads(line) for line in cli("env", "ls", "--json").stdout.splitlines()]
    assert row["id"] == environment
    assert row["limits"]["memory_bytes"] == 256 * 1024**2
    assert set(row["usage"]) >= {"cpu_seconds", "memory_bytes", "pids", "disk_bytes"}

    created = cli("env", "create", "--json", "--label", "k=v")
    assert created.exit_code == 0, created.output
    other = json.loads(created.stdout)
    assert other["labels"] == {"k": "v"}
    assert cli("env", "rm", other["id"]).exit_code == 0


def test_env_cp_uploads_and_downloads_files(cli: Cli, environment: str, tmp_path: Path) -> None:
    content = bytes(range(256)) * 40
    local = tmp_path / "data.bin"
    local.write_bytes(content)

    uploaded = cli("env", "cp", str(local), f"{environment}:inbox/data.bin")
    assert uploaded.exit_code == 0, uploaded.output
    listed = cli("env", "exec", environment, "--", "wc", "-c", "inbox/data.bin")
    assert listed.stdout.split()[0] == str(len(content))
    into_dir = cli("env", "cp", str(local), f"{environment}:")
    assert into_dir.exit_code == 0, into_dir.output
    assert cli("env", "exec", environment, "--", "test", "-f", "data.bin").exit_code == 0

    copied_back = tmp_path / "back.bin"
    downloaded = cli("env", "cp", f"{environment}:inbox/data.bin", str(copied_back))
    assert downloaded.exit_code == 0, downloaded.output
    assert copied_back.read_bytes() == content
    folder = tmp_path / "folder"
    folder.mkdir()
    assert cli("env", "cp", f"{environment}:inbox/data.bin", str(folder)).exit_code == 0
    assert (folder / "data.bin").read_bytes() == content

    both_local = cli("env", "cp", str(local), str(tmp_path / "x"))
    assert both_local.exit_code == 2
    assert "ENV:path" in both_local.output
    missing_remote = cli("env", "cp", f"{environment}:nope.txt", str(tmp_path / "x"))
    assert missing_remote.exit_code == 6, missing_remote.output
    assert missing_remote.output.count("error:") == 1
    missing_local = cli("env", "cp", str(tmp_path / "absent"), f"{environment}:x")
    assert missing_local.exit_code == 17, missing_local.output


def test_env_exec_passes_stdin_and_reports_how_the_command_ended(
    cli: Cli, environment: str
) -> None:
    piped = cli("env", "exec", environment, "--", "tr", "a-z", "A-Z", stdin="hello\n")
    assert piped.exit_code == 0, piped.output
    assert piped.stdout == "HELLO\n"
    ignored = cli("env", "exec", "--no-stdin", environment, "--", "cat", stdin="hello\n")
    assert ignored.exit_code == 0, ignored.output
    assert ignored.stdout == ""

    # Options go before the id; after it, everything is the command's.
    echoed = cli("env", "exec", environment, "--", "echo", "--timeout", "--check")
    assert echoed.stdout == "--timeout --check\n"
    assert cli("env", "exec", environment, "echo", "--check").stdout == "--check\n"

    signalled = cli("env", "exec", environment, "--", "sh", "-c", "kill -TERM $$")
    assert signalled.exit_code == 128 + 15
    assert "command killed by signal 15" in signalled.stderr

    timed_out = cli("env", "exec", "--timeout", "1s", environment, "--", "sleep", "30")
    assert "command ended by TIMEOUT" in timed_out.stderr
    assert timed_out.exit_code in (124, 128 + 9), timed_out.output


def test_env_exec_says_when_the_command_ran_out_of_memory(cli: Cli) -> None:
    environment = _created(cli, "--memory", "32Mi")
    try:
        hog = "a=$(head -c 200000000 /dev/zero | tr '\\0' x); echo ${#a}"
        ran = cli("env", "exec", environment, "--", "sh", "-c", hog)
    finally:
        cli("env", "rm", environment)
    assert "command ended by OUT_OF_MEMORY" in ran.stderr, ran.output
    assert ran.exit_code == 128 + 9


def test_env_exec_s_own_failures_exit_125_and_the_command_s_status_passes(
    cli: Cli, environment: str
) -> None:
    for status in (1, 2, 6, 64, 124, 125, 126, 255):
        ran = cli("env", "exec", environment, "--", "sh", "-c", f"exit {status}")
        assert ran.exit_code == status
        assert "error" not in ran.output
    unknown_env = cli("env", "exec", "env-o1-0123456789abcdef", "--", "true")
    assert unknown_env.exit_code == 125
    assert unknown_env.output.count("error:") == 1
    bad_option = cli("env", "exec", "--bogus", environment, "--", "true")
    assert bad_option.exit_code == 125
    checked = cli("env", "exec", "--check", environment, "--", "sh", "-c", "exit 3")
    assert checked.exit_code == 16


def _run_experiment(cli: Cli, environment: str, *options: str) -> str:
    ran = cli("run", "--env", environment, *options)
    assert ran.exit_code == 0, ran.output
    match = re.search(r"experiment (exp-o1-[0-9a-f]{16})", ran.stderr)
    assert match, ran.output
    return match.group(1)


def test_results_compare_power_plots_and_scorer_failures(
    cli: Cli, environment: str, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs.jsonl"
    rows = [{"prompt": word, "expected": word} for word in ("alpha", "beta", "gamma")]
    inputs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    options = ("--model", "echo", "--inputs", str(inputs), "--scorer", "contains")
    clean = _run_experiment(cli, environment, *options, "--repeats", "2")
    ran = cli("run", "--env", environment, *options, "--scorer", FAILING_SCORER)
    assert ran.exit_code == 0, ran.output
    assert "warning:" in ran.stderr
    assert "picky on 3" in ran.stderr
    failing = re.search(r"experiment (exp-o1-[0-9a-f]{16})", ran.stderr)
    assert failing

    document = json.loads(cli("results", clean, "--json").stdout)
    contains = document["metrics"]["contains"]
    assert contains["mean"] == 1.0
    assert contains["inputs"] == 3
    assert contains["repeats"] == 2
    assert contains["failed"] == 0
    assert {"ci_low", "ci_high", "standard_error", "interval_method", "confidence"} <= set(contains)
    assert len(document["samples"]) == 6
    assert document["score_failures"] == {}

    events = [json.loads(line) for line in cli("logs", clean, "--json").stdout.splitlines()]
    assert events[-1]["state"] == "SUCCEEDED"
    measured = cli("metrics", clean, "--json").stdout.splitlines()
    assert {json.loads(line)["name"] for line in measured} >= {"latency_seconds"}
    models = json.loads(cli("models", "--json").stdout)
    assert "echo" in [alias for model in models for alias in model["aliases"]]
    got = json.loads(cli("experiments", "get", clean, "--json").stdout)
    assert got["state"] == "SUCCEEDED"
    assert got["completed_samples"] == 6

    warned = cli("results", failing.group(1))
    assert warned.exit_code == 0, warned.output
    assert "picky on 3" in warned.stderr
    failed_doc = json.loads(cli("results", failing.group(1), "--json").stdout)
    assert failed_doc["score_failures"] == {"picky": 3}

    compared = cli("compare", clean, failing.group(1), "--json")
    assert compared.exit_code == 0, compared.output
    assert "picky on 3" in compared.stderr
    comparison = json.loads(compared.stdout)
    [metric] = [m for m in comparison["metrics"] if m["name"] == "contains"]
    assert metric["difference"] == 0.0
    assert {"p_value", "p_value_adjusted", "test", "paired", "significant"} <= set(metric)

    single = _run_experiment(cli, environment, "--model", "echo", "-p", "one")
    table = cli("results", single)
    assert table.exit_code == 0, table.output
    assert "n/a" in table.stdout, "one input: no interval"
    latency = json.loads(cli("results", single, "--json").stdout)["metrics"]["latency_seconds"]
    assert latency["ci_low"] is None
    assert latency["interval_method"] == "NONE"

    plotted = cli("results", clean, "--plot", str(tmp_path / "results.png"))
    assert plotted.exit_code == 0, plotted.output
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    diff_plot = cli("compare", clean, failing.group(1), "--plot", str(tmp_path / "diff.png"))
    assert diff_plot.exit_code == 0, diff_plot.output
    assert (tmp_path / "diff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    planned = cli("power", "--rate", "0.5", "--difference", "0.2", "--json")
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.stdout)
    assert plan["inputs"] > 10
    assert plan["alpha"] == 0.05
    from_baseline = cli(
        "power", "--baseline", clean, "--metric", "latency_seconds", "--difference", "0.01"
    )
    assert from_baseline.exit_code == 0, from_baseline.output
    assert from_baseline.stdout.strip()
    no_source = cli("power", "--difference", "0.1")
    assert no_source.exit_code == 2
    assert "--rate" in no_source.output


def test_fail_on_scorer_error_fails_the_experiment(cli: Cli, environment: str) -> None:
    failed = cli(
        "run",
        "--env",
        environment,
        "--model",
        "echo",
        "-p",
        "hi",
        "--scorer",
        FAILING_SCORER,
        "--fail-on-scorer-error",
    )
    assert failed.exit_code == 13, failed.output
    assert "SCORER_FAILED" in failed.output
    assert failed.output.count("error:") == 1
    assert "raise_on_failure" not in failed.output
    assert "sandbox-sdk results" in failed.output


def test_experiments_ls_get_cancel_and_hints_in_cli_words(slow_cli: Cli) -> None:
    environment = _created(slow_cli)
    try:
        started = slow_cli(
            "run", "--env", environment, "--model", "slow", "-p", LONG_PROMPT, "--no-follow"
        )
        assert started.exit_code == 0, started.output
        experiment_id = started.stdout.strip()

        listed = slow_cli("experiments", "ls")
        assert experiment_id in listed.stdout
        [row] = [
            json.loads(line) for line in slow_cli("experiments", "ls", "--json").stdout.splitlines()
        ]
        assert row["id"] == experiment_id
        assert row["environment_id"] == environment
        assert slow_cli("experiments", "ls", "--state", "succeeded").stdout.count("exp-") == 0

        waited = slow_cli("results", experiment_id, "--wait", "0.5")
        assert waited.exit_code == 11, waited.output
        assert "larger --wait" in waited.output
        assert "experiments cancel" in waited.output
        assert "cancel()" not in waited.output
        assert waited.output.count("error:") == 1

        cancelled = slow_cli("experiments", "cancel", experiment_id)
        assert cancelled.exit_code == 0, cancelled.output
        assert f"{experiment_id} CANCELLED" in cancelled.stdout
        shown = json.loads(slow_cli("experiments", "get", experiment_id, "--json").stdout)
        assert shown["state"] == "CANCELLED"
        assert "CANCELLED" in slow_cli("experiments", "get", experiment_id).stdout

        ended = slow_cli("results", experiment_id)
        assert ended.exit_code == 13, ended.output
        assert "--partial" in ended.output
        assert slow_cli("results", experiment_id, "--partial").exit_code == 0
        missing = slow_cli("experiments", "get", "exp-o1-0123456789abcdef")
        assert missing.exit_code == 6
        assert missing.output.count("error:") == 1
    finally:
        slow_cli("env", "rm", environment)


def _wait_until_running(stack: EmbeddedStack, api_key: str, experiment_id: str) -> None:
    with stack.client(api_key=api_key) as client:
        deadline = time.monotonic() + 60
        state = client.get_experiment(experiment_id).state()
        while state is ExperimentState.QUEUED and time.monotonic() < deadline:
            time.sleep(0.1)
            state = client.get_experiment(experiment_id).state()
        assert state is ExperimentState.RUNNING


def test_ctrl_c_during_run_cancels_the_experiment_it_started(slow_stack: EmbeddedStack) -> None:
    api_key = slow_stack.tenant_key(unique_tenant("cli-pty"))
    with slow_stack.client(api_key=api_key) as client:
        sandbox = client.create_environment()
        try:
            child = pexpect.spawn(
                str(BIN_DIR / "sandbox-sdk"),
                [
                    "--target",
                    slow_stack.target,
                    "--api-key",
                    api_key,
                    "run",
                    "--env",
                    sandbox.id,
                    "--model",
                    "slow",
                    "-p",
                    LONG_PROMPT,
                ],
                encoding="utf-8",
                timeout=60,
                dimensions=(40, 200),
            )
            try:
                child.expect(r"experiment (exp-o1-[0-9a-f]{16}) in")
                experiment_id = child.match.group(1)
                _wait_until_running(slow_stack, api_key, experiment_id)
                child.sendintr()
                child.expect(pexpect.EOF)
                output = child.before
            finally:
                child.close(force=True)
            assert child.exitstatus == 130, output
            assert f"cancelling experiment {experiment_id}" in output
            assert f"experiment {experiment_id} CANCELLED" in output
            assert "Traceback" not in output
            assert client.get_experiment(experiment_id).state() is ExperimentState.CANCELLED
        finally:
            sandbox.delete()


def test_serve_on_a_busy_port_says_so_and_leaves_no_data_dir(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        served = subprocess.run(
            [
                str(BIN_DIR / "sandbox-sdk"),
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert served.returncode != 0
    assert served.stdout == ""
    [line] = served.stderr.splitlines()
    assert f"port {port}" in line
    assert "in use" in line
    assert not data_dir.exists()
