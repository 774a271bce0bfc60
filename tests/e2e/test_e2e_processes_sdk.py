"""Background processes, the interactive shell and port forwarding through the SDK (sync and
async) and the CLI, against the real embedded server and real sandboxes (#15)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pexpect
import pytest
import sandbox_runtimes
from cli_forward import SANDBOX_SDK, env_forward
from e2e_support import EmbeddedStack

from sandbox_sdk import (
    AsyncSandboxClient,
    ExitReason,
    ProcessState,
    Sandbox,
    SandboxClient,
)
from sandbox_sdk.models.environment import IsolationRuntime

pytestmark = [pytest.mark.isolation, pytest.mark.timeout(180)]

WEB_PORT = 8000

# Starts an HTTP server detached from the exec that launches it, and returns once it listens.
_HTTP_LAUNCHER = """
import socket, subprocess, sys, time
port = int(sys.argv[1])
subprocess.Popen(
    [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    start_new_session=True,
)
for _ in range(600):
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
"""


@pytest.fixture
def sandbox(client: SandboxClient) -> Iterator[Sandbox]:
    with client.create_environment(ttl="10m") as created:
        yield created


@pytest.fixture
def web_sandbox(sandbox: Sandbox) -> Sandbox:
    """An environment whose workspace an HTTP server on 127.0.0.1:8000 serves."""
    sandbox.write_file("hello.txt", "hello through the tunnel\n")
    sandbox.exec(["python3", "-c", _HTTP_LAUNCHER, str(WEB_PORT)], timeout=60, check=True)
    return sandbox


@pytest.fixture
def cli_env(stack: EmbeddedStack) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    return {**environ, "SANDBOX_TARGET": stack.target, "SANDBOX_API_KEY": stack.admin_key}


# -- processes -----------------------------------------------------------------------------


def test_a_process_reads_stdin_as_a_stream_and_a_second_client_attaches(
    sandbox: Sandbox, stack: EmbeddedStack
) -> None:
    process = sandbox.start(["python3", "-u", "-c", _ECHO_UPPER], stdin=True)
    assert process.pid > 0
    assert process.state is ProcessState.RUNNING
    process.write("first\n")
    with stack.client() as other:
        attached = other.get_environment(sandbox.id).process(process.id)
        assert [p.id for p in other.get_environment(sandbox.id).processes()] == [process.id]
        lines = attached.stdout_lines()
        assert next(lines) == "FIRST"
        process.write("second\n")
        assert next(lines) == "SECOND"
        process.close_stdin()
        assert list(lines) == ["bye"]
        result = attached.wait(timeout=60)
    assert (result.state, result.exit_code, result.reason) == (
        ProcessState.EXITED,
        0,
        ExitReason.EXITED,
    )
    assert result.usage.cpu_seconds > 0


_ECHO_UPPER = "import sys\nfor line in sys.stdin:\n    print(line.strip().upper())\nprint('bye')\n"


def test_output_resumes_from_a_sequence_without_loss_or_repeats(sandbox: Sandbox) -> None:
    process = sandbox.start("for i in 1 2 3 4 5 6; do echo line $i; done")
    process.wait(timeout=60)
    everything = list(process.output())
    assert b"".join(c.data for c in everything) == b"".join(
        f"line {i}\n".encode() for i in range(1, 7)
    )
    cut = everything[len(everything) // 2].sequence
    rest = list(process.output(after_sequence=cut))
    assert rest == [c for c in everything if c.sequence > cut]


def test_kill_and_wait_report_the_signal(sandbox: Sandbox) -> None:
    process = sandbox.start(["sleep", "600"])
    process.kill()
    result = process.wait(timeout=60)
    assert (result.state, result.signal, result.reason) == (
        ProcessState.KILLED,
        signal.SIGKILL,
        ExitReason.SIGNALED,
    )
    assert sandbox.processes() == []
    assert [p.id for p in sandbox.processes(include_finished=True)] == [process.id]


async def test_async_process_lifecycle(async_client: AsyncSandboxClient) -> None:
    async with await async_client.create_environment(ttl="10m") as sandbox:
        process = await sandbox.start(["cat"], stdin=True)
        await process.write("async hello\n")
        await process.close_stdin()
        assert [line async for line in process.stdout_lines()] == ["async hello"]
        assert (await process.wait(timeout=60)).ok
        sleeper = await sandbox.start(["sleep", "600"])
        await (await sandbox.process(sleeper.id)).kill()
        assert (await sleeper.wait(timeout=60)).signal == signal.SIGKILL


def test_cli_start_attach_kill_wait(cli_env: dict[str, str], sandbox: Sandbox) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SANDBOX_SDK, "env", *args],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    started = run("start", sandbox.id, "--", "sh", "-c", "echo started; exit 5")
    process_id = started.stdout.strip()
    assert process_id.startswith("p-"), started.stderr
    attached = run("attach", sandbox.id, process_id)
    assert (attached.returncode, attached.stdout) == (5, "started\n")
    sleeper = json.loads(run("start", "--json", sandbox.id, "--", "sleep", "600").stdout)
    assert sleeper["id"] in run("ps", sandbox.id).stdout
    assert run("kill", sandbox.id, sleeper["id"]).returncode == 0
    assert run("wait", sandbox.id, sleeper["id"]).returncode == 128 + signal.SIGKILL


# -- the interactive shell -----------------------------------------------------------------


def _spawn_env_shell(cli_env: dict[str, str], sandbox: Sandbox) -> pexpect.spawn:
    """`sandbox-sdk env shell` in a local terminal of 24x80; after it ends, prints
    TERMINAL-RESTORED if the local terminal's settings are as before."""
    script = (
        'before=$(stty -g); "$0" env shell "$1"; status=$?; '
        '[ "$before" = "$(stty -g)" ] && echo TERMINAL-RESTORED; exit $status'
    )
    return pexpect.spawn(
        "/bin/sh",
        ["-c", script, SANDBOX_SDK, sandbox.id],
        env=cli_env,
        dimensions=(24, 80),
        timeout=60,
    )


def test_env_shell_in_a_real_terminal(cli_env: dict[str, str], sandbox: Sandbox) -> None:
    shell = _spawn_env_shell(cli_env, sandbox)
    try:
        shell.sendline("echo $((6 * 7))")
        shell.expect("42")
        shell.sendline("stty size")
        shell.expect("24 80")
        shell.setwinsize(30, 100)
        _until_size(shell, "30 100")
        shell.sendline("exit 3")
        shell.expect("TERMINAL-RESTORED")
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)
    assert shell.exitstatus == 3


def test_ctrl_c_in_env_shell_interrupts_the_remote_command_not_the_cli(
    cli_env: dict[str, str], sandbox: Sandbox, request: pytest.FixtureRequest
) -> None:
    if sandbox_runtimes.current() is IsolationRuntime.GVISOR:
        request.applymarker(
            pytest.mark.xfail(
                reason="gVisor's terminal (runsc 20221219, Debian bookworm) does not turn an "
                "interrupt character written to the pty's master into SIGINT for its "
                "foreground group, so Ctrl-C reaches the remote command as a byte",
                strict=True,
            )
        )
    shell = _spawn_env_shell(cli_env, sandbox)
    try:
        shell.sendline("echo $((6 * 7))")
        shell.expect("42")
        # Ctrl-C is sent once the command has the terminal: bash hands the terminal to a
        # child before it execs, so the child's own output proves it. Sent sooner, it can
        # reach bash between its reading the line and the handover, as it can at any
        # terminal, and the sleep then runs on. Its echo says "2 + 3", its output 5.
        shell.sendline("sh -c 'echo sleeping-$((2 + 3)); exec sleep 600'")
        shell.expect("sleeping-5")
        shell.sendcontrol("c")
        # The sum is printed only once the shell runs commands again: its echo says "1 + 1".
        shell.sendline("echo still-$((1 + 1))")
        # A bound, not a timing check: under gVisor the run waits it out every time.
        shell.expect("still-2", timeout=10)
        shell.sendline("exit 3")
        shell.expect(pexpect.EOF)
    finally:
        shell.close(force=True)
    assert shell.exitstatus == 3


def _until_size(shell: pexpect.spawn, size: str) -> None:
    """Asks the remote terminal its size until the resize (sent on SIGWINCH) has arrived."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shell.sendline("stty size")
        if shell.expect([size, pexpect.TIMEOUT], timeout=2) == 0:
            return
    raise AssertionError(f"the remote terminal never became {size}")


# -- port forwarding -----------------------------------------------------------------------


def test_forward_reaches_a_server_in_the_environment(web_sandbox: Sandbox) -> None:
    with web_sandbox.forward(WEB_PORT) as local_port:
        for _ in range(2):  # each request is its own connection and stream
            url = f"http://127.0.0.1:{local_port}/hello.txt"
            with urllib.request.urlopen(url, timeout=30) as response:
                assert response.read() == b"hello through the tunnel\n"


async def test_async_forward_reaches_a_server_in_the_environment(
    async_client: AsyncSandboxClient, web_sandbox: Sandbox
) -> None:
    sandbox = await async_client.get_environment(web_sandbox.id)
    async with sandbox.forward(WEB_PORT) as local_port:
        reader, writer = await asyncio.open_connection("127.0.0.1", local_port)
        writer.write(b"GET /hello.txt HTTP/1.0\r\nHost: sandbox\r\n\r\n")
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 30)
        writer.close()
    assert response.startswith(b"HTTP/1.0 200")
    assert response.endswith(b"hello through the tunnel\n")


def test_cli_forward_prints_the_address_and_stops_on_ctrl_c(
    cli_env: dict[str, str], web_sandbox: Sandbox
) -> None:
    with env_forward(cli_env, web_sandbox.id, WEB_PORT) as forward:
        assert forward.stdout is not None
        address = forward.stdout.readline().strip()
        assert address.startswith("127.0.0.1:")
        with urllib.request.urlopen(f"http://{address}/hello.txt", timeout=30) as response:
            assert response.read() == b"hello through the tunnel\n"
        forward.send_signal(signal.SIGINT)
        assert forward.wait(timeout=60) == 0
