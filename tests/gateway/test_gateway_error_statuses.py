"""The gateway's handlers are wrapped for rich error statuses once per method, with no
interceptor run on every call: errors still carry the request id, unknown methods stay
UNIMPLEMENTED, hostile method paths are not remembered, and a page of responses a stream
handler yields goes out message by message."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_testkit import detail
from google.rpc import error_details_pb2

from sandbox_sdk.api.v1 import gateway_service_pb2_grpc, requests_pb2
from sandbox_sdk.errors import REQUEST_ID_KEY
from sandbox_sdk.server.embedded import EmbeddedServer, run_embedded
from sandbox_sdk.server.gateway.api_keys import Scope
from sandbox_sdk.server.response_page import ResponsePage, each_response
from sandbox_sdk.server.status import ErrorStatusHandlers, ServiceError, invalid_argument


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    """``sandbox-sdk serve`` with its in-process link."""
    embedded = await run_embedded("127.0.0.1", 0, tmp_path)
    yield embedded
    await embedded.stop(1)


async def test_a_refused_call_carries_the_request_id_it_was_sent_with(
    server: EmbeddedServer,
) -> None:
    created = server.gateway.keys.create("alpha", [Scope.READ])
    request_id = secrets.token_hex(16)
    metadata = (("authorization", f"Bearer {created.secret}"), (REQUEST_ID_KEY, request_id))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetEnvironment(
                requests_pb2.GetEnvironmentRequest(environment_id="not an id"),
                metadata=metadata,
                timeout=30,
            )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert detail(caught.value, error_details_pb2.RequestInfo).request_id == request_id
    violations = detail(caught.value, error_details_pb2.BadRequest).field_violations
    assert [v.field for v in violations] == ["environment_id"]


async def test_an_unknown_method_is_unimplemented(server: EmbeddedServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/sandbox.v1.GatewayService/NoSuchMethod")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"", timeout=30)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def _refuse(request: bytes, context: Any) -> bytes:
    raise invalid_argument([("request", "refused")])


def test_hostile_method_paths_are_not_remembered() -> None:
    served = grpc.method_handlers_generic_handler(
        "test.Service", {"Call": grpc.unary_unary_rpc_method_handler(_refuse)}
    )
    handlers = ErrorStatusHandlers(served)

    for index in range(1000):
        assert handlers.service(_Details(f"/test.Service/Guess{index}")) is None
    first = handlers.service(_Details("/test.Service/Call"))

    assert first is not None
    assert handlers.service(_Details("/test.Service/Call")) is first  # wrapped once
    assert len(handlers._wrapped) == 1
    assert first.unary_unary is not _refuse  # wrapped to turn ServiceError into a status


async def _paged(request: bytes, context: Any) -> AsyncIterator[bytes | ResponsePage]:
    yield b"one"
    yield ResponsePage([b"two", b"three"])
    yield ResponsePage([])
    yield b"four"
    raise invalid_argument([("request", "refused after four")])


async def test_a_page_a_stream_handler_yields_is_sent_message_by_message() -> None:
    served = grpc.method_handlers_generic_handler(
        "test.Service", {"Stream": grpc.unary_stream_rpc_method_handler(_paged)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((ErrorStatusHandlers(served),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream("/test.Service/Stream")(b"", timeout=30)
            received: list[bytes] = []
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _collect(call, received)
    finally:
        await server.stop(None)
    assert received == [b"one", b"two", b"three", b"four"]
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_each_response_reads_a_handlers_pages_message_by_message() -> None:
    items: list[bytes] = []
    with pytest.raises(ServiceError):
        await _collect(each_response(_paged(b"", None)), items)
    assert items == [b"one", b"two", b"three", b"four"]


async def _collect(messages: AsyncIterable[bytes], into: list[bytes]) -> None:
    async for message in messages:
        into.append(message)
