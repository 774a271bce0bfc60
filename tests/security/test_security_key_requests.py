"""Issue 10, item 6 (the API-key RPCs): authenticate first, then decode; never UNKNOWN.

Corrupt request bytes sent to CreateApiKey, ListApiKeys and RevokeApiKey: without
a key the answer is UNAUTHENTICATED (nothing about the request is looked at),
with a key lacking the scope PERMISSION_DENIED, and with an admin key
INVALID_ARGUMENT naming the request. Never UNKNOWN or INTERNAL.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from gateway_callers import Caller, Stack
from gateway_testkit import reason

from sandbox_sdk.api.v1 import gateway_service_pb2 as gw
from sandbox_sdk.server.gateway.api_keys import Scope

KEY_RPCS = ["CreateApiKey", "ListApiKeys", "RevokeApiKey"]
# Bytes that are no protobuf message at all, whatever its fields.
CORRUPT = {
    "garbage": b"\xff\xff\xff\xff",
    "truncated-varint": b"\x08",
    "length-past-the-end": b"\x0a\x05ab",
    "truncated-fixed32": b"\x0d\x00\x00",
    "end-group-without-start": b"\x0c",
    "field-number-zero": b"\x00\x01",
    "unfinished-tag": b"\x80",
}
# A string field holding bytes that are not UTF-8: tenant, page_token, api_key_id.
INVALID_UTF8 = {
    "CreateApiKey": b"\x0a\x02\xc3\x28",
    "ListApiKeys": b"\x12\x02\xc3\x28",
    "RevokeApiKey": b"\x0a\x02\xc3\x28",
}


def _raw(channel: grpc.aio.Channel, method: str) -> Callable[..., object]:
    return channel.unary_unary(
        f"/sandbox.v1.GatewayService/{method}",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )


@pytest.fixture
def channel(stack: Stack, channels: Callable[[str], grpc.aio.Channel]) -> grpc.aio.Channel:
    return channels(f"127.0.0.1:{stack.gateway.port}")


async def _code(
    channel: grpc.aio.Channel, method: str, payload: bytes, metadata: tuple[tuple[str, str], ...]
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _raw(channel, method)(payload, metadata=metadata, timeout=10)  # type: ignore[misc]
    return caught.value


@pytest.mark.parametrize("method", KEY_RPCS)
@pytest.mark.parametrize("payload", list(CORRUPT.values()), ids=list(CORRUPT))
async def test_corrupt_key_requests_without_a_key_are_unauthenticated(
    channel: grpc.aio.Channel, method: str, payload: bytes
) -> None:
    for metadata in [(), (("authorization", "Bearer nope"),)]:
        error = await _code(channel, method, payload, metadata)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("method", KEY_RPCS)
@pytest.mark.parametrize("payload", list(CORRUPT.values()), ids=list(CORRUPT))
async def test_corrupt_key_requests_are_invalid_arguments_for_admins(
    stack: Stack,
    channel: grpc.aio.Channel,
    caller_for: Callable[..., Caller],
    method: str,
    payload: bytes,
) -> None:
    admin = caller_for(stack.gateway, "team-a", (Scope.ADMIN,))
    for corrupt in (payload, INVALID_UTF8[method]):
        error = await _code(channel, method, corrupt, admin.metadata)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert reason(error) == "INVALID_ARGUMENT"
        assert f"sandbox.v1.{method}Request" in (error.details() or "")
    reader = caller_for(stack.gateway, "team-a", (Scope.READ,))
    denied = await _code(channel, method, payload, reader.metadata)
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_well_formed_request_still_works_after_the_corrupt_ones(
    stack: Stack, channel: grpc.aio.Channel, caller_for: Callable[..., Caller]
) -> None:
    admin = caller_for(stack.gateway, "team-a", (Scope.ADMIN,))
    for payload in CORRUPT.values():
        await _code(channel, "ListApiKeys", payload, admin.metadata)
    raw = await _raw(channel, "ListApiKeys")(  # type: ignore[misc]
        gw.ListApiKeysRequest().SerializeToString(), metadata=admin.metadata, timeout=10
    )
    assert gw.ListApiKeysResponse.FromString(raw).api_keys
