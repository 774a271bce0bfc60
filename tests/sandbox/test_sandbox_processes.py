"""Background processes and PTYs (#15) in real sandboxes, through a grpc.aio server
serving the orchestrator's handlers with the ErrorInterceptor."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from agent_modes import agent_mode
from sandbox_support import TENANT as SANDBOX_TENANT
from sandbox_support import create, fast_settings, needs_isolation, running_manager

from sandbox_sdk.api.v1 import (
    environment_pb2,
    orchestrator_service_pb2_grpc,
    process_pb2,
    requests_pb2,
)
from sandbox_sdk.errors import ErrorReason, from_rpc_error
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator import servicer
from sandbox_sdk.server.orchestrator.sandbox import EnvironmentHandlers
from sandbox_sdk.server.orchestrator.sandbox.environment_record import Command
from sandbox_sdk.server.orchestrator.sandbox.processes import ManagedProcess
from sandbox_sdk.server.orchestrator.sandbox.processes_store import ProcessStore
from sandbox_sdk.server.status import ErrorInterceptor
from sandbox_sdk.server.tenancy import TENANT_KEY

# Every test runs with either agent mode (see agent_modes).
pytestmark = [*needs_isolation, pytest.mark.usefixtures("agent_mode")]
__all__ = ["agent_mode"]

RUNNING = process_pb2.PROCESS_STATE_RUNNING
EXITED = process_pb2.PROCESS_STATE_EXITED
KILLED = process_pb2.PROCESS_STATE_KILLED


@dataclass
class World:
    stub: orchestrator_service_pb2_grpc.OrchestratorServiceStub
    a: tuple[tuple[str, str]]
    b: tuple[tuple[str, str]]
    env_a: str
    env_b: str


@asynccontextmanager
async def _world(tmp_path: Path, **settings: object) -> AsyncIterator[World]:
    async with running_manager(tmp_path, settings=fast_settings(**settings)) as manager:
        server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        handlers = servicer.handler_table(EnvironmentHandlers(manager), object(), None)
        servicer.add_orchestrator_service(server, handlers)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
                a, b = ((TENANT_KEY, "tenant-a"),), ((TENANT_KEY, "tenant-b"),)
                created = []
                for tenant in (a, b):
                    response = await stub.CreateEnvironment(
                        requests_pb2.CreateEnvironmentRequest(), metadata=tenant
                    )
                    created.append(response.environment.id)
                yield World(stub, a, b, created[0], created[1])
        finally:
            await server.stop(None)


async def _start(world: World, argv: list[str], **fields: object) -> process_pb2.Process:
    request = requests_pb2.StartProcessRequest(environment_id=world.env_a, argv=argv, **fields)
    response = await world.stub.StartProcess(request, metadata=world.a)
    return response.process


async def _wait(world: World, process_id: str, timeout: float = 30) -> process_pb2.Process:
    request = requests_pb2.WaitProcessRequest(environment_id=world.env_a, process_id=process_id)
    response = await world.stub.WaitProcess(request, metadata=world.a, timeout=timeout)
    return response.process


async def _output(
    world: World, process_id: str, after: int = 0, follow: bool = True
) -> list[process_pb2.ProcessOutputEvent]:
    request = requests_pb2.StreamProcessOutputRequest(
        environment_id=world.env_a, process_id=process_id, after_sequence=after, follow=follow
    )
    return [r.event async for r in world.stub.StreamProcessOutput(request, metadata=world.a)]


def _stdout(events: list[process_pb2.ProcessOutputEvent]) -> bytes:
    return b"".join(e.stdout for e in events)


async def _until_output(world: World, process_id: str, wanted: bytes) -> None:
    for _ in range(300):
        if wanted in _stdout(await _output(world, process_id, follow=False)):
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{wanted!r} never came")


async def _write(world: World, process_id: str, data: bytes, close: bool = False) -> None:
    await world.stub.WriteProcessInput(
        requests_pb2.WriteProcessInputRequest(
            environment_id=world.env_a, process_id=process_id, data=data, close=close
        ),
        metadata=world.a,
    )


async def test_a_background_process_lists_streams_to_two_clients_and_resumes(
    tmp_path: Path,
) -> None:
    async with _world(tmp_path) as world:
        script = "for i in 1 2 3 4 5; do echo line$i; echo err$i >&2; sleep 0.1; done; exit 3"
        process = await _start(
            world, ["sh", "-c", script], request_id=str(uuid.uuid4()), env={"X": "1"}
        )
        assert process.id.startswith("p-")
        assert len(process.id) == 14
        assert process.state == RUNNING
        assert process.pid > 0
        listed = await world.stub.ListProcesses(
            requests_pb2.ListProcessesRequest(environment_id=world.env_a), metadata=world.a
        )
        assert [p.id for p in listed.processes] == [process.id]

        first, second = await asyncio.gather(_output(world, process.id), _output(world, process.id))
        for events in (first, second):
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            assert _stdout(events) == b"".join(b"line%d\n" % i for i in range(1, 6))
            assert b"".join(e.stderr for e in events) == b"".join(
                b"err%d\n" % i for i in range(1, 6)
            )
            assert events[-1].HasField("exited")
            assert events[-1].exited.exit_code == 3
        # Resuming from any sequence loses nothing and repeats nothing.
        middle = first[len(first) // 2].sequence
        rest = await _output(world, process.id, after=middle)
        assert [e.sequence for e in rest] == [e.sequence for e in first if e.sequence > middle]

        ended = await _wait(world, process.id)
        assert ended.state == EXITED
        assert ended.exit_code == 3
        assert ended.termination_reason == environment_pb2.EXIT_REASON_EXITED
        assert ended.HasField("end_time")
        assert ended.cpu_seconds >= 0
        assert ended.max_rss_bytes > 0
        assert not ended.stdin_open
        # Running only by default; finished ones when asked.
        running = await world.stub.ListProcesses(
            requests_pb2.ListProcessesRequest(environment_id=world.env_a), metadata=world.a
        )
        assert list(running.processes) == []
        everything = await world.stub.ListProcesses(
            requests_pb2.ListProcessesRequest(environment_id=world.env_a, include_finished=True),
            metadata=world.a,
        )
        assert [p.id for p in everything.processes] == [process.id]
        # A repeated request_id returns the first process.
        again = await world.stub.StartProcess(
            requests_pb2.StartProcessRequest(
                environment_id=world.env_a, argv=["true"], request_id="same"
            ),
            metadata=world.a,
        )
        repeat = await world.stub.StartProcess(
            requests_pb2.StartProcessRequest(
                environment_id=world.env_a, argv=["true"], request_id="same"
            ),
            metadata=world.a,
        )
        assert again.process.id == repeat.process.id


async def test_stdin_in_several_writes_then_close(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        process = await _start(world, ["cat"], stdin=True)
        assert process.stdin_open
        for part in (b"one ", b"two ", b"three"):
            await _write(world, process.id, part)
        await _write(world, process.id, b"!", close=True)
        ended = await _wait(world, process.id)
        assert ended.state == EXITED
        assert ended.exit_code == 0
        assert _stdout(await _output(world, process.id)) == b"one two three!"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _write(world, process.id, b"late")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        no_stdin = await _start(world, ["sleep", "30"])
        with pytest.raises(grpc.aio.AioRpcError) as closed:
            await _write(world, no_stdin.id, b"x")
        assert from_rpc_error(closed.value).reason == ErrorReason.STDIN_CLOSED


async def test_signal_kill_and_the_allow_list(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        process = await _start(world, ["sleep", "60"])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await world.stub.SignalProcess(
                requests_pb2.SignalProcessRequest(
                    environment_id=world.env_a, process_id=process.id, signal=11
                ),
                metadata=world.a,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await world.stub.SignalProcess(
            requests_pb2.SignalProcessRequest(
                environment_id=world.env_a, process_id=process.id, signal=15
            ),
            metadata=world.a,
        )
        ended = await _wait(world, process.id)
        assert ended.state == KILLED
        assert ended.signal == 15
        assert ended.termination_reason == environment_pb2.EXIT_REASON_SIGNALED
        # Signalling an ended process succeeds and changes nothing.
        again = await world.stub.SignalProcess(
            requests_pb2.SignalProcessRequest(
                environment_id=world.env_a, process_id=process.id, signal=9
            ),
            metadata=world.a,
        )
        assert again.process.signal == 15


async def test_a_signal_right_after_start_is_never_lost(tmp_path: Path) -> None:
    # A process's group must exist by the time its start is answered: the agent signals
    # the group, and a command forked (under gVisor, or with a pty) made it only after
    # answering, once. Signalled in the same turn of the loop as the start returns.
    async with running_manager(tmp_path) as manager:
        environment = await create(manager)
        for pty in (None, (24, 80)):
            for index in range(10):
                process = await manager.processes.start(
                    SANDBOX_TENANT,
                    environment.id,
                    Command(argv=("sleep", "60")),
                    keep_stdin=False,
                    pty=pty,
                    request_id=f"kill-{pty}-{index}",
                )
                manager.processes.signal(process, 9)
                await asyncio.wait_for(process.done.wait(), 30)  # a deadline, not a timing check
                assert (process.state, process.signal) == ("KILLED", 9)


async def test_sigint_ends_a_process_without_a_handler(tmp_path: Path) -> None:
    # The agent ignores SIGINT; its processes must not inherit that.
    async with _world(tmp_path) as world:
        process = await _start(world, ["sleep", "60"])
        await world.stub.SignalProcess(
            requests_pb2.SignalProcessRequest(
                environment_id=world.env_a, process_id=process.id, signal=2
            ),
            metadata=world.a,
        )
        ended = await _wait(world, process.id)
        assert ended.state == KILLED
        assert ended.signal == 2


async def test_wait_is_bounded_by_the_deadline(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        process = await _start(world, ["sleep", "60"])
        with pytest.raises(grpc.aio.AioRpcError) as waited:
            await _wait(world, process.id, timeout=0.5)
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_pty_process_has_a_terminal_and_sees_resizes(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        process = await _start(world, ["sh"], pty=process_pb2.PtySize(rows=24, cols=80), stdin=True)
        assert process.pty
        assert process.stdin_open
        await _write(world, process.id, b"tty; stty size\n")
        await _until_output(world, process.id, b"24 80")
        await world.stub.ResizeProcessTerminal(
            requests_pb2.ResizeProcessTerminalRequest(
                environment_id=world.env_a,
                process_id=process.id,
                size=process_pb2.PtySize(rows=40, cols=132),
            ),
            metadata=world.a,
        )
        await _write(world, process.id, b"stty size; exit 7\n")
        ended = await _wait(world, process.id)
        assert ended.exit_code == 7
        output = _stdout(await _output(world, process.id))
        assert b"/dev/pts/" in output, output
        assert b"not a tty" not in output
        assert b"24 80" in output, output
        assert b"40 132" in output, output

        plain = await _start(world, ["sleep", "30"])
        with pytest.raises(grpc.aio.AioRpcError) as not_terminal:
            await world.stub.ResizeProcessTerminal(
                requests_pb2.ResizeProcessTerminalRequest(
                    environment_id=world.env_a,
                    process_id=plain.id,
                    size=process_pb2.PtySize(rows=5, cols=5),
                ),
                metadata=world.a,
            )
        assert from_rpc_error(not_terminal.value).reason == ErrorReason.NOT_A_TERMINAL


async def test_output_beyond_the_buffer_is_out_of_range(tmp_path: Path) -> None:
    async with _world(tmp_path, process_output_buffer_bytes=64 * 1024) as world:
        process = await _start(world, ["sh", "-c", "head -c 1000000 /dev/zero"])
        await _wait(world, process.id)
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await _output(world, process.id, after=1)
        error = from_rpc_error(expired.value)
        assert expired.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert error.reason == ErrorReason.OUTPUT_EXPIRED
        oldest = int(error.metadata["oldest_sequence"])
        kept = await _output(world, process.id, after=oldest - 1)
        assert kept[0].sequence == oldest
        assert kept[-1].HasField("exited")


async def test_another_tenant_cannot_reach_a_process(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        process = await _start(world, ["sleep", "60"])
        calls = [
            world.stub.GetProcess(
                requests_pb2.GetProcessRequest(environment_id=world.env_a, process_id=process.id),
                metadata=world.b,
            ),
            world.stub.SignalProcess(
                requests_pb2.SignalProcessRequest(
                    environment_id=world.env_a, process_id=process.id, signal=9
                ),
                metadata=world.b,
            ),
            world.stub.WriteProcessInput(
                requests_pb2.WriteProcessInputRequest(
                    environment_id=world.env_a, process_id=process.id, data=b"x"
                ),
                metadata=world.b,
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        # Tenant B's own environment does not have A's process either.
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await world.stub.GetProcess(
                requests_pb2.GetProcessRequest(environment_id=world.env_b, process_id=process.id),
                metadata=world.b,
            )
        assert from_rpc_error(missing.value).reason == ErrorReason.PROCESS_NOT_FOUND
        got = await world.stub.GetProcess(
            requests_pb2.GetProcessRequest(environment_id=world.env_a, process_id=process.id),
            metadata=world.a,
        )
        assert got.process.state == RUNNING


async def test_hostile_argv_and_env_and_limits(tmp_path: Path) -> None:
    async with _world(tmp_path, max_processes_per_environment=2) as world:
        bad_requests = [
            requests_pb2.StartProcessRequest(environment_id=world.env_a, argv=[]),
            requests_pb2.StartProcessRequest(environment_id=world.env_a, argv=["a\0b"]),
            requests_pb2.StartProcessRequest(
                environment_id=world.env_a, argv=["true"], env={"A=B": "x"}
            ),
            requests_pb2.StartProcessRequest(
                environment_id=world.env_a, argv=["true"], cwd="../../etc"
            ),
            requests_pb2.StartProcessRequest(
                environment_id=world.env_a, argv=["true"], pty=process_pb2.PtySize(rows=0)
            ),
        ]
        for request in bad_requests:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await world.stub.StartProcess(request, metadata=world.a)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        missing = await _start(world, ["/no/such/program"])
        ended = await _wait(world, missing.id)
        assert ended.state == process_pb2.PROCESS_STATE_FAILED_TO_START
        assert "cannot run" in ended.start_error
        await _start(world, ["sleep", "60"])
        await _start(world, ["sleep", "60"])
        with pytest.raises(grpc.aio.AioRpcError) as exhausted:
            await _start(world, ["sleep", "60"])
        assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_processes_end_with_their_environment(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        process = await _start(world, ["sleep", "600"])
        waiting = asyncio.ensure_future(_wait(world, process.id))
        await world.stub.DeleteEnvironment(
            requests_pb2.DeleteEnvironmentRequest(environment_id=world.env_a), metadata=world.a
        )
        try:
            ended = await waiting
        except grpc.aio.AioRpcError:
            return  # the environment went first: the process went with it
        assert ended.state == KILLED
        assert ended.termination_reason == environment_pb2.EXIT_REASON_CANCELLED


async def test_processes_are_reported_after_an_orchestrator_restart(tmp_path: Path) -> None:
    async with _world(tmp_path) as world:
        finished = await _start(world, ["sh", "-c", "exit 5"])
        await _wait(world, finished.id)
        running = await _start(world, ["sleep", "600"])
        environment_id = world.env_a
    # A crash leaves rows RUNNING: the next start marks them KILLED.
    store = ProcessStore(Database(tmp_path / "orchestrator.db"))
    left = ManagedProcess(
        id="p-0123456789ab",
        environment_id=environment_id,
        argv=("sleep", "1000"),
        cwd="/workspace",
        pty=False,
        buffer_limit=1 << 16,
        pid=7,
    )
    store.save(left)
    async with _world(tmp_path) as world:
        listed = await world.stub.ListProcesses(
            requests_pb2.ListProcessesRequest(environment_id=environment_id, include_finished=True),
            metadata=world.a,
        )
        by_id = {p.id: p for p in listed.processes}
        assert set(by_id) == {finished.id, running.id, left.id}
        assert by_id[finished.id].state == EXITED
        assert by_id[finished.id].exit_code == 5
        for lost in (running.id, left.id):
            assert by_id[lost].state == KILLED
            assert by_id[lost].termination_reason == environment_pb2.EXIT_REASON_CANCELLED
        assert "restarted" in by_id[left.id].start_error
        waited = await world.stub.WaitProcess(
            requests_pb2.WaitProcessRequest(environment_id=environment_id, process_id=left.id),
            metadata=world.a,
            timeout=5,
        )
        assert waited.process.state == KILLED
        events = [
            r.event
            async for r in world.stub.StreamProcessOutput(
                requests_pb2.StreamProcessOutputRequest(
                    environment_id=environment_id, process_id=finished.id
                ),
                metadata=world.a,
            )
        ]
        assert [e.WhichOneof("payload") for e in events] == ["exited"]
        with pytest.raises(grpc.aio.AioRpcError) as other_tenant:
            await world.stub.GetProcess(
                requests_pb2.GetProcessRequest(environment_id=environment_id, process_id=left.id),
                metadata=world.b,
            )
        assert other_tenant.value.code() == grpc.StatusCode.NOT_FOUND
