"""The in-process link's deadlines: one timer per call, not a timeout scope per message.

The link is called directly (as the gateway calls it) on the real orchestrator:
ExecCommand's command can hold a stream's read open, and WaitProcess a unary call, for
as long as it likes.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import grpc
import pytest
from process_watch import eventually, processes_running, sleep_marker

from sandbox_sdk.api.v1 import gateway_service_pb2_grpc, requests_pb2
from sandbox_sdk.server.embedded import EmbeddedServer, run_embedded
from sandbox_sdk.server.gateway.api_keys import Scope
from sandbox_sdk.server.gateway.orchestrators import OrchestratorLink, StreamCall, call_metadata

EXEC = "/sandbox.v1.OrchestratorService/ExecCommand"
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    """``sandbox-sdk serve`` with its in-process link."""
    embedded = await run_embedded("127.0.0.1", 0, tmp_path)
    yield embedded
    await embedded.stop(1)


@pytest.fixture
async def environment_id(server: EmbeddedServer) -> AsyncIterator[str]:
    """A running environment of tenant ``alpha``, deleted after the test."""
    created = server.gateway.keys.create("alpha", [Scope.READ, Scope.WRITE])
    key = (("authorization", f"Bearer {created.secret}"),)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        response = await stub.CreateEnvironment(
            requests_pb2.CreateEnvironmentRequest(), metadata=key, timeout=60
        )
        yield response.environment.id
        await stub.DeleteEnvironment(
            requests_pb2.DeleteEnvironmentRequest(environment_id=response.environment.id),
            metadata=key,
            timeout=60,
        )


def _exec(
    link: OrchestratorLink, environment_id: str, script: str, timeout: float | None
) -> StreamCall:
    request = requests_pb2.ExecCommandRequest(
        environment_id=environment_id, argv=["sh", "-c", script]
    )
    return link.stream(EXEC)(
        request.SerializeToString(),
        timeout=timeout,
        metadata=call_metadata(link, "alpha", secrets.token_hex(8)),
    )


async def test_a_command_that_holds_a_read_open_past_the_deadline_ends_it_and_dies(
    server: EmbeddedServer, environment_id: str
) -> None:
    # The attack: a command that never writes again keeps the handler awaiting forever.
    link = server.gateway.pool.links[0]
    marker = sleep_marker()
    call = _exec(link, environment_id, f"{' '.join(marker)} & wait", timeout=2.0)
    messages = aiter(call)
    try:
        first = requests_pb2.ExecCommandResponse.FromString(await anext(messages))
        assert first.WhichOneof("event") == "started"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await anext(messages)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: not processes_running(marker), "the timed-out command's tree died")
    finally:
        call.cancel()


async def test_a_deadline_that_passes_between_reads_ends_the_next_read(
    server: EmbeddedServer, environment_id: str
) -> None:
    link = server.gateway.pool.links[0]
    marker = sleep_marker()
    call = _exec(link, environment_id, f"echo up; {' '.join(marker)}", timeout=1.0)
    messages = aiter(call)
    try:
        assert requests_pb2.ExecCommandResponse.FromString(await anext(messages)).HasField(
            "started"
        )
        await asyncio.sleep(1.5)  # past the deadline, with no read in progress
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await anext(messages)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        assert call.cancel()
    await eventually(lambda: not processes_running(marker), "the abandoned command's tree died")


async def test_cancelling_the_reader_stays_a_cancellation_not_a_deadline(
    server: EmbeddedServer, environment_id: str
) -> None:
    link = server.gateway.pool.links[0]
    marker = sleep_marker()
    call = _exec(link, environment_id, f"{' '.join(marker)} & wait", timeout=60.0)
    messages = aiter(call)
    try:
        assert requests_pb2.ExecCommandResponse.FromString(await anext(messages)).HasField(
            "started"
        )
        reading = asyncio.create_task(anext(messages))
        await eventually(lambda: bool(processes_running(marker)), "the command started")
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
    finally:
        call.cancel()
    await eventually(lambda: not processes_running(marker), "the cancelled command's tree died")


async def test_a_stream_read_to_its_end_within_the_deadline_is_unaffected(
    server: EmbeddedServer, environment_id: str
) -> None:
    link = server.gateway.pool.links[0]
    call = _exec(link, environment_id, "echo one; echo two", timeout=60.0)
    events = [
        requests_pb2.ExecCommandResponse.FromString(message).WhichOneof("event")
        async for message in call
    ]
    assert events[0] == "started"
    assert events[-1] == "exited"


async def _started_process(link: OrchestratorLink, environment_id: str, argv: list[str]) -> str:
    started = await link.unary("/sandbox.v1.OrchestratorService/StartProcess")(
        requests_pb2.StartProcessRequest(
            environment_id=environment_id, argv=argv
        ).SerializeToString(),
        timeout=60,
        metadata=call_metadata(link, "alpha", secrets.token_hex(8)),
    )
    return requests_pb2.StartProcessResponse.FromString(started).process.id


def _wait_process(
    link: OrchestratorLink, environment_id: str, process_id: str, timeout: float
) -> Awaitable[bytes]:
    return link.unary("/sandbox.v1.OrchestratorService/WaitProcess")(
        requests_pb2.WaitProcessRequest(
            environment_id=environment_id, process_id=process_id
        ).SerializeToString(),
        timeout=timeout,
        metadata=call_metadata(link, "alpha", secrets.token_hex(8)),
    )


async def test_a_unary_call_that_waits_past_its_deadline_is_deadline_exceeded(
    server: EmbeddedServer, environment_id: str
) -> None:
    link = server.gateway.pool.links[0]
    process_id = await _started_process(link, environment_id, sleep_marker())

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _wait_process(link, environment_id, process_id, timeout=1.0)

    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_cancelling_a_waiting_unary_call_stays_a_cancellation(
    server: EmbeddedServer, environment_id: str
) -> None:
    link = server.gateway.pool.links[0]
    marker = sleep_marker()
    process_id = await _started_process(link, environment_id, marker)
    await eventually(lambda: bool(processes_running(marker)), "the process started")
    waiting = asyncio.ensure_future(_wait_process(link, environment_id, process_id, timeout=60))
    await asyncio.sleep(0.2)

    waiting.cancel()

    with pytest.raises(asyncio.CancelledError):
        await waiting
