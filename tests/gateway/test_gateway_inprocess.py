"""The embedded server's in-process link: the gateway calling the real OrchestratorApp's handlers.

Every test goes through the gateway's public port, as a client would; the
orchestrator behind it is the real one (bubblewrap sandboxes, SQLite).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from gateway_testkit import detail, reason
from google.rpc import error_details_pb2
from process_watch import eventually, processes_running, sleep_marker

from sandbox_sdk.api.v1 import common_pb2, environment_pb2, gateway_service_pb2_grpc, requests_pb2
from sandbox_sdk.errors import REQUEST_ID_KEY, ErrorReason
from sandbox_sdk.server.embedded import EmbeddedServer, run_embedded
from sandbox_sdk.server.gateway.api_keys import Scope
from sandbox_sdk.server.gateway.in_process import InProcessLink
from sandbox_sdk.server.gateway.orchestrators import (
    GrpcOrchestratorLink,
    call_metadata,
    fetch_capacity,
)

Stub = gateway_service_pb2_grpc.GatewayServiceStub
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    """``sandbox-sdk serve`` as it runs by default: in-process link."""
    embedded = await run_embedded("127.0.0.1", 0, tmp_path)
    yield embedded
    await embedded.stop(1)


@pytest.fixture
async def stub(server: EmbeddedServer) -> AsyncIterator[Stub]:
    """A client stub on the gateway's port."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield Stub(channel)


def _tenant_key(server: EmbeddedServer, tenant: str) -> Metadata:
    created = server.gateway.keys.create(tenant, [Scope.READ, Scope.WRITE])
    return (("authorization", f"Bearer {created.secret}"),)


async def _create(stub: Stub, key: Metadata) -> str:
    response = await stub.CreateEnvironment(
        requests_pb2.CreateEnvironmentRequest(), metadata=key, timeout=60
    )
    return response.environment.id


async def _delete(stub: Stub, key: Metadata, environment_id: str) -> None:
    await stub.DeleteEnvironment(
        requests_pb2.DeleteEnvironmentRequest(environment_id=environment_id),
        metadata=key,
        timeout=60,
    )


async def test_serve_links_the_gateway_in_process_unless_told_not_to(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    assert isinstance(server.gateway.pool.links[0], InProcessLink)
    over_grpc = await run_embedded("127.0.0.1", 0, tmp_path / "grpc", in_process=False)
    try:
        assert isinstance(over_grpc.gateway.pool.links[0], GrpcOrchestratorLink)
        key = (("authorization", f"Bearer {over_grpc.admin_key_path.read_text().strip()}"),)
        async with grpc.aio.insecure_channel(over_grpc.address) as channel:
            listed = await Stub(channel).ListEnvironments(
                requests_pb2.ListEnvironmentsRequest(), metadata=key, timeout=30
            )
        assert list(listed.environments) == []
    finally:
        await over_grpc.stop(1)


async def test_placement_reads_capacity_through_the_link(
    server: EmbeddedServer, stub: Stub
) -> None:
    key = _tenant_key(server, "alpha")
    link = server.gateway.pool.links[0]
    before = await fetch_capacity(link, 5.0)
    environment_id = await _create(stub, key)
    try:
        assert environment_id.startswith(f"env-{link.id}-")
        after = await fetch_capacity(link, 5.0)
        assert after.environments_running == before.environments_running + 1
        assert after.environments_max > 0
    finally:
        await _delete(stub, key, environment_id)


async def test_another_tenants_environment_is_not_found(server: EmbeddedServer, stub: Stub) -> None:
    alpha, beta = _tenant_key(server, "alpha"), _tenant_key(server, "beta")
    environment_id = await _create(stub, alpha)
    try:
        request = requests_pb2.GetEnvironmentRequest(environment_id=environment_id)
        owned = await stub.GetEnvironment(request, metadata=alpha, timeout=30)
        assert owned.environment.id == environment_id
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetEnvironment(request, metadata=beta, timeout=30)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        assert reason(caught.value) == ErrorReason.ENVIRONMENT_NOT_FOUND
        listed = await stub.ListEnvironments(
            requests_pb2.ListEnvironmentsRequest(), metadata=beta, timeout=30
        )
        assert list(listed.environments) == []
    finally:
        await _delete(stub, alpha, environment_id)


async def test_bad_input_reaches_the_client_as_field_violations_with_the_request_id(
    server: EmbeddedServer, stub: Stub
) -> None:
    request_id = secrets.token_hex(8)
    key = (*_tenant_key(server, "alpha"), (REQUEST_ID_KEY, request_id))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateEnvironment(
            requests_pb2.CreateEnvironmentRequest(
                spec=environment_pb2.EnvironmentSpec(
                    limits=common_pb2.ResourceLimits(memory_bytes=1 << 50, max_pids=2)
                )
            ),
            metadata=key,
            timeout=30,
        )
    error = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert reason(error) == ErrorReason.INVALID_ARGUMENT
    violations = detail(error, error_details_pb2.BadRequest).field_violations
    assert {v.field for v in violations} == {"spec.limits.memory_bytes", "spec.limits.max_pids"}
    assert all(v.description for v in violations)
    assert detail(error, error_details_pb2.RequestInfo).request_id == request_id


async def test_an_unexpected_orchestrator_failure_is_internal_with_the_request_id(
    server: EmbeddedServer, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("secret internals")

    # Fault injection: the real handler runs, the manager call under it fails.
    monkeypatch.setattr(server.orchestrator.sandboxes, "environment_usage", broken)
    request_id = secrets.token_hex(8)
    key = (*_tenant_key(server, "alpha"), (REQUEST_ID_KEY, request_id))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetEnvironmentUsage(
            requests_pb2.GetEnvironmentUsageRequest(environment_id="env-o1-0123456789abcdef"),
            metadata=key,
            timeout=30,
        )
    error = caught.value
    assert error.code() is grpc.StatusCode.INTERNAL
    assert request_id in (error.details() or "")
    assert "secret internals" not in (error.details() or "")
    assert reason(error) == ErrorReason.INTERNAL
    assert detail(error, error_details_pb2.RequestInfo).request_id == request_id


async def test_an_exec_stream_arrives_message_by_message(
    server: EmbeddedServer, stub: Stub
) -> None:
    key = _tenant_key(server, "alpha")
    environment_id = await _create(stub, key)
    try:
        call = stub.ExecCommand(
            requests_pb2.ExecCommandRequest(
                environment_id=environment_id, argv=["sh", "-c", "echo one; echo two >&2"]
            ),
            metadata=key,
            timeout=60,
        )
        events = [event async for event in call]
        kinds = [event.WhichOneof("event") for event in events]
        assert kinds[0] == "started"
        assert kinds[-1] == "exited"
        assert b"".join(e.stdout for e in events) == b"one\n"
        assert b"".join(e.stderr for e in events) == b"two\n"
        assert events[-1].exited.exit_code == 0
    finally:
        await _delete(stub, key, environment_id)


@pytest.mark.parametrize(
    "loop",
    ["wait", "while :; do echo tick; sleep 0.01; done"],
    ids=["silent", "chatty"],
)
async def test_cancelling_an_exec_call_kills_its_processes(
    server: EmbeddedServer, stub: Stub, loop: str
) -> None:
    key = _tenant_key(server, "alpha")
    environment_id = await _create(stub, key)
    marker = sleep_marker()
    try:
        call = stub.ExecCommand(
            requests_pb2.ExecCommandRequest(
                environment_id=environment_id,
                argv=["sh", "-c", f"{' '.join(marker)} & echo up; {loop}"],
            ),
            metadata=key,
            timeout=60,
        )
        assert (await call.read()).WhichOneof("event") == "started"
        assert (await call.read()).stdout.startswith(b"up\n")
        await eventually(lambda: bool(processes_running(marker)), "the command started")
        call.cancel()
        await eventually(lambda: not processes_running(marker), "the cancelled command's tree died")
    finally:
        await _delete(stub, key, environment_id)


async def test_an_exec_call_past_its_deadline_ends_and_kills_its_processes(
    server: EmbeddedServer, stub: Stub
) -> None:
    key = _tenant_key(server, "alpha")
    environment_id = await _create(stub, key)
    marker = sleep_marker()
    try:
        call = stub.ExecCommand(
            requests_pb2.ExecCommandRequest(
                environment_id=environment_id, argv=["sh", "-c", f"{' '.join(marker)}; echo x"]
            ),
            metadata=key,
            timeout=2,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: not processes_running(marker), "the timed-out command's tree died")
    finally:
        await _delete(stub, key, environment_id)


async def test_cancelling_a_paused_in_process_stream_closes_the_handler(
    server: EmbeddedServer, stub: Stub
) -> None:
    # The gateway cancels its upstream call when it stops reading; here the
    # link's stream is read directly and left paused between messages.
    key = _tenant_key(server, "alpha")
    environment_id = await _create(stub, key)
    marker = sleep_marker()
    link = server.gateway.pool.links[0]
    try:
        call = link.stream("/sandbox.v1.OrchestratorService/ExecCommand")(
            requests_pb2.ExecCommandRequest(
                environment_id=environment_id, argv=["sh", "-c", f"{' '.join(marker)} & wait"]
            ).SerializeToString(),
            metadata=call_metadata(link, "alpha", secrets.token_hex(8)),
        )
        messages = aiter(call)
        first = requests_pb2.ExecCommandResponse.FromString(await anext(messages))
        assert first.WhichOneof("event") == "started"
        await eventually(lambda: bool(processes_running(marker)), "the command started")
        assert call.cancel()
        await eventually(lambda: not processes_running(marker), "the cancelled command's tree died")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await anext(messages)
        assert caught.value.code() is grpc.StatusCode.CANCELLED
    finally:
        await _delete(stub, key, environment_id)


async def test_a_deadline_reaches_the_handler_as_deadline_exceeded(server: EmbeddedServer) -> None:
    link = server.gateway.pool.links[0]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await link.unary("/sandbox.v1.OrchestratorService/GetCapacity")(b"", timeout=0.0)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
