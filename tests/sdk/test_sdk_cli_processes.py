"""``sandbox-sdk env start/ps/attach/kill/wait/shell/forward`` against the fake gateway:
CliRunner for the plain commands, a real pty (pexpect) for the shell and a real process
for forward."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator

import pexpect
import pytest
from cli_forward import SANDBOX_SDK, env_forward
from sdk_fake_gateway import API_KEY, FakeServer
from sdk_fake_processes import FakeProcessGateway
from test_sdk_processes import web_port  # noqa: F401 (a fixture)
from typer.testing import CliRunner, Result

from sandbox_sdk import SandboxClient
from sandbox_sdk.cli.main import app

Cli = Callable[..., Result]
runner = CliRunner()


@pytest.fixture
def gateway() -> Iterator[FakeProcessGateway]:
    fake = FakeProcessGateway()
    yield fake
    fake.stop_all()


@pytest.fixture
def cli_env(server: FakeServer) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    return {
        **environ,
        "SANDBOX_TARGET": server.target,
        "SANDBOX_API_KEY": API_KEY,
        "SANDBOX_RETRY_MAX_ATTEMPTS": "1",
    }


@pytest.fixture
def cli(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    for key in ("SANDBOX_TARGET", "SANDBOX_API_KEY", "SANDBOX_RETRY_MAX_ATTEMPTS"):
        monkeypatch.setenv(key, cli_env[key])
    monkeypatch.delenv("SANDBOX_CONFIG", raising=False)

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args))

    return invoke


@pytest.fixture
def environment_id(client: SandboxClient) -> str:
    return client.create_environment().id


def test_start_attach_wait(cli: Cli, environment_id: str) -> None:
    started = cli(
        "env", "start", environment_id, "--", "sh", "-c", "echo hi; echo oops >&2; exit 4"
    )
    assert started.exit_code == 0, started.output
    process_id = started.stdout.strip()
    assert process_id.startswith("p-")

    attached = cli("env", "attach", environment_id, process_id)
    assert attached.exit_code == 4
    assert attached.stdout == "hi\n"
    assert "oops" in attached.stderr

    waited = cli("env", "wait", environment_id, process_id, "--json")
    assert waited.exit_code == 4
    info = json.loads(waited.stdout)
    assert (info["state"], info["exit_code"], info["id"]) == ("EXITED", 4, process_id)


def test_ps_kill_and_the_status_of_a_killed_process(cli: Cli, environment_id: str) -> None:
    started = cli("env", "start", "--json", environment_id, "--", "sleep", "60")
    process_id = json.loads(started.stdout)["id"]
    listed = cli("env", "ps", environment_id)
    assert process_id in listed.stdout
    assert "RUNNING" in listed.stdout

    killed = cli("env", "kill", environment_id, process_id, "--signal", "TERM")
    assert killed.exit_code == 0, killed.output
    assert "signal 15" in killed.stderr
    waited = cli("env", "wait", environment_id, process_id)
    assert waited.exit_code == 128 + 15
    assert "killed by signal 15" in waited.stderr
    assert cli("env", "ps", environment_id).stdout.count("p-") == 0
    lines = cli("env", "ps", environment_id, "--all", "--json").stdout.splitlines()
    assert [json.loads(line)["state"] for line in lines] == ["KILLED"]


def test_unknown_process_and_bad_pty_are_reported(cli: Cli, environment_id: str) -> None:
    missing = cli("env", "attach", environment_id, "p-000000000099")
    assert missing.exit_code != 0
    assert "not found" in missing.stderr
    bad = cli("env", "start", "--pty", "tall", environment_id, "--", "sh")
    assert bad.exit_code == 2
    assert "ROWSxCOLS" in bad.stderr


def _until_resized(gateway: FakeProcessGateway) -> None:
    deadline = time.monotonic() + 20
    while not gateway.calls("ResizeProcessTerminal"):
        assert time.monotonic() < deadline, "the shell never sent ResizeProcessTerminal"
        time.sleep(0.05)


def test_shell_is_interactive_in_a_real_terminal_and_restores_it(
    cli_env: dict[str, str], environment_id: str, gateway: FakeProcessGateway
) -> None:
    script = (
        'before=$(stty -g); "$0" env shell "$1"; status=$?; '
        '[ "$before" = "$(stty -g)" ] && echo TERMINAL-RESTORED; exit $status'
    )
    shell = pexpect.spawn(
        "/bin/sh",
        ["-c", script, SANDBOX_SDK, environment_id],
        env=cli_env,
        dimensions=(24, 80),
        timeout=30,
    )
    try:
        shell.sendline("echo $((6 * 7))")
        shell.expect("42")
        shell.sendline("stty size")
        shell.expect("24 80")
        shell.setwinsize(30, 100)  # SIGWINCH -> ResizeProcessTerminal
        _until_resized(gateway)
        shell.sendline("stty size")
        shell.expect("30 100")
        # Ctrl-C once the command has the terminal (its own output proves it); the sums
        # are printed only by the shell, never by the echo of the typed line.
        shell.sendline("sh -c 'echo sleeping-$((2 + 3)); exec sleep 60'")
        shell.expect("sleeping-5")
        shell.sendcontrol("c")  # reaches the remote shell, not the CLI
        shell.sendline("echo still-$((1 + 1))")
        shell.expect("still-2", timeout=10)
        shell.sendline("exit 3")
        shell.expect("TERMINAL-RESTORED")
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)
    assert shell.exitstatus == 3


def test_forward_prints_the_address_and_stops_on_ctrl_c(
    cli_env: dict[str, str],
    environment_id: str,
    web_port: int,  # noqa: F811
) -> None:
    with env_forward(cli_env, environment_id, web_port) as forward:
        assert forward.stdout is not None
        address = forward.stdout.readline().strip()
        assert address.startswith("127.0.0.1:")
        with urllib.request.urlopen(f"http://{address}/cli", timeout=10) as response:
            assert response.read() == b"hello from /cli"
        forward.send_signal(signal.SIGINT)
        assert forward.wait(timeout=30) == 0
