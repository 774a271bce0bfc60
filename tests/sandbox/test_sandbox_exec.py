"""Running commands: streaming as produced, big output, caps, stdin, timeouts, cancelling."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sandbox_support import (
    TENANT,
    command_pids,
    create,
    eventually_async,
    make_spec,
    needs_isolation,
    pid_alive,
    processes_inside,
    run,
    running_manager,
    under_gvisor,
)

from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Command,
    ExecExited,
    ExecOutput,
    ExecStarted,
    ExitReason,
    FileWrite,
)
from sandbox_sdk.server.status import ServiceError

pytestmark = needs_isolation

TEN_MB = """
import hashlib, os, sys
data = os.urandom(10 << 20)
for start in range(0, len(data), 100_000):
    sys.stdout.buffer.write(data[start:start + 100_000])
sys.stdout.flush()
sys.stderr.write(hashlib.sha256(data).hexdigest())
"""

HANDSHAKE = """
import os, time
print("first", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("second", flush=True)
"""


async def test_ten_megabytes_arrive_whole_and_in_order(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        result = await run(manager, environment.id, ["python3", "-c", TEN_MB])
        assert result.result.reason is ExitReason.EXITED, result.err
        assert len(result.stdout) == 10 << 20
        assert hashlib.sha256(result.stdout).hexdigest() == result.err
        assert len(result.chunks) > 1
        assert not result.result.stdout_truncated


async def test_output_is_streamed_before_the_command_exits(tmp_path: Path) -> None:
    # The command cannot print "second" (or exit) until the test has seen "first":
    # it waits for a file that the test writes only after receiving the first line.
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        events = manager.exec_command(
            TENANT, environment.id, Command(argv=("python3", "-c", HANDSHAKE), timeout_seconds=30)
        )
        started = await anext(events)
        assert isinstance(started, ExecStarted)
        first = await anext(events)
        assert first == ExecOutput("stdout", b"first\n")
        # Under gVisor the command is no host process (its pid is 0 on the wire).
        assert under_gvisor() or pid_alive(started.pid)
        await manager.write_file(TENANT, environment.id, FileWrite("go", b""))
        rest = [event async for event in events]
        assert ExecOutput("stdout", b"second\n") in rest
        assert isinstance(rest[-1], ExecExited)
        assert rest[-1].reason is ExitReason.EXITED


async def test_output_past_the_cap_is_truncated_and_flagged(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        script = "import sys; sys.stdout.write('x' * 5000); sys.stderr.write('e' * 10)"
        result = await run(
            manager, environment.id, ["python3", "-c", script], output_cap_bytes=1000
        )
        assert result.stdout == b"x" * 1000
        assert result.result.stdout_truncated
        assert result.stderr == b"e" * 10
        assert not result.result.stderr_truncated


async def test_stdin_cwd_and_environment_variables_reach_the_command(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        spec = make_spec(env_vars={"FROM_SPEC": "spec", "SHARED": "spec"})
        environment = await create(manager, spec, files=[FileWrite("sub/dir/f.txt", b"data")])
        result = await run(
            manager,
            environment.id,
            ["sh", "-c", "pwd; cat; echo; echo $FROM_SPEC $SHARED; ls"],
            cwd="sub/dir",
            stdin=b"hello from stdin",
            env_vars={"SHARED": "command"},
        )
        assert result.out.splitlines() == [
            "/workspace/sub/dir",
            "hello from stdin",
            "spec command",
            "f.txt",
        ]


async def test_exit_codes_signals_and_timeouts_are_reported(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        exited = (await run(manager, environment.id, ["sh", "-c", "exit 7"])).result
        assert (exited.reason, exited.exit_code, exited.signal) == (ExitReason.EXITED, 7, 0)
        # As in a shell, a command killed by a signal is reported as that signal.
        script = "sleep 30 & kill -KILL $!; wait $!"
        killed = (await run(manager, environment.id, ["sh", "-c", script])).result
        assert (killed.reason, killed.signal, killed.exit_code) == (ExitReason.SIGNALED, 9, -1)
        slow = await run(manager, environment.id, ["sleep", "30"], timeout=0.5)
        assert (slow.result.reason, slow.result.signal) == (ExitReason.TIMEOUT, 9)
        assert slow.result.exit_code == -1


@pytest.mark.bubblewrap_only(
    reason="watches the commands as host processes, which gVisor's are not; "
    "test_cancelling_the_stream_kills_the_process_tree_inside checks it under both"
)
async def test_cancelling_the_stream_kills_the_process_tree(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        events = manager.exec_command(
            TENANT, environment.id, Command(argv=("sh", "-c", "sleep 300 & echo up; wait"))
        )
        started = await anext(events)
        assert isinstance(started, ExecStarted)
        assert await anext(events) == ExecOutput("stdout", b"up\n")
        pids = command_pids(environment.id)
        assert len(pids) >= 2
        await events.aclose()
        assert not any(pid_alive(pid) for pid in pids)
        assert not command_pids(environment.id)


async def test_many_commands_do_not_exhaust_the_pids_limit(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, make_spec(max_pids=8))
        for _ in range(12):
            result = await run(manager, environment.id, ["sh", "-c", "true | true"])
            assert result.result.exit_code == 0, result.err


async def test_run_command_port_collects_a_result(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        result = await manager.port.run_command(
            environment.id, ["sh", "-c", "cat; echo oops >&2; exit 3"], stdin=b"in", timeout=10
        )
        assert (result.exit_code, result.reason) == (3, ExitReason.EXITED)
        assert (result.stdout, result.stderr) == (b"in", b"oops\n")
        capped = await manager.port.run_command(
            environment.id, ["python3", "-c", "print('y' * 100)"], output_limit_bytes=10
        )
        assert capped.stdout == b"y" * 10
        assert capped.stdout_truncated
        with pytest.raises(ServiceError) as error:
            await manager.port.run_command(environment.id, [])
        assert error.value.field_violations[0][0] == "argv"
        with pytest.raises(ServiceError) as error:
            await manager.port.run_command(environment.id, ["true"], env_vars={"X": "a\x00b"})
        assert error.value.field_violations[0][0] == "env_vars['X']"


async def test_missing_working_directory_is_rejected(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        with pytest.raises(ServiceError) as error:
            await run(manager, environment.id, ["true"], cwd="nowhere")
        assert error.value.reason == "FILE_NOT_FOUND"


async def test_commands_that_cannot_run_exit_127_or_126_saying_why(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, files=[FileWrite("data.txt", b"not a program")])
        missing = await run(manager, environment.id, ["no-such-program"])
        assert (missing.result.reason, missing.result.exit_code) == (ExitReason.EXITED, 127)
        assert missing.err == "sandbox: cannot run 'no-such-program': No such file or directory\n"
        denied = await run(manager, environment.id, ["./data.txt"])
        assert (denied.result.reason, denied.result.exit_code) == (ExitReason.EXITED, 126)
        assert denied.err == "sandbox: cannot run './data.txt': Permission denied\n"
        # The command's own PATH is searched, not the agent's.
        found = await run(manager, environment.id, ["tool"], env_vars={"PATH": "/workspace/bin"})
        assert found.result.exit_code == 127
        await manager.write_file(
            TENANT, environment.id, FileWrite("bin/tool", b"#!/bin/sh\necho tool\n", 0o755)
        )
        found = await run(manager, environment.id, ["tool"], env_vars={"PATH": "/workspace/bin"})
        assert (found.result.exit_code, found.out) == (0, "tool\n")


COUNT_OPEN_FDS = """
import os
print(*[fd for fd in range(256) if os.path.exists(f"/proc/self/fd/{fd}")])
"""


async def test_commands_inherit_only_their_standard_streams(tmp_path: Path) -> None:
    # Neither the agent's socket nor other commands' pipes leak into a command.
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        result = await run(manager, environment.id, ["python3", "-c", COUNT_OPEN_FDS], stdin=b"x")
        assert result.out.split() == ["0", "1", "2"], result.err


async def test_activity_is_visible_before_it_is_saved(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        before = manager.get_environment(TENANT, environment.id).last_activity_time
        await run(manager, environment.id, ["true"])
        after = manager.get_environment(TENANT, environment.id).last_activity_time
        assert after > before


async def test_cancelling_the_stream_kills_the_process_tree_inside(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        events = manager.exec_command(
            TENANT, environment.id, Command(argv=("sh", "-c", "sleep 303 & echo up; wait"))
        )
        assert isinstance(await anext(events), ExecStarted)
        assert await anext(events) == ExecOutput("stdout", b"up\n")

        async def sleep_started() -> bool:
            # The shell's background child runs as a copy of the shell until it executes.
            return "sleep 303" in await processes_inside(manager, environment.id)

        await eventually_async(sleep_started, True, what="the background sleep started")
        await events.aclose()
        await eventually_async(
            lambda: processes_inside(manager, environment.id), [], what="the tree died"
        )
