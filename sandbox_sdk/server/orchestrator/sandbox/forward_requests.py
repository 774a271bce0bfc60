"""ForwardPort's stream of requests: the header first (checked here), then bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sandbox_sdk.api.v1 import requests_pb2
from sandbox_sdk.server.orchestrator.sandbox import validation
from sandbox_sdk.server.status import invalid_argument

MAX_FORWARD_CHUNK_BYTES = 1 << 20
_MAX_PORT = 65535


async def forward_target(
    requests: AsyncIterator[requests_pb2.ForwardPortRequest],
) -> tuple[str, int]:
    """The environment id and port the first message (the header) names, both checked."""
    first = await anext(requests, None)
    if first is None or first.WhichOneof("payload") != "header":
        raise invalid_argument(
            [
                (
                    "header",
                    "required: the first message is the header naming the environment"
                    " and the port; send the bytes after it",
                )
            ]
        )
    environment_id = validation.environment_id(first.header.environment_id)
    return environment_id, _port(first.header.port)


def _port(port: int) -> int:
    if not 1 <= port <= _MAX_PORT:
        raise invalid_argument(
            [("header.port", f"{port} is not a TCP port; give one from 1 to {_MAX_PORT}")]
        )
    return port


async def forwarded_bytes(
    requests: AsyncIterator[requests_pb2.ForwardPortRequest],
) -> AsyncIterator[bytes]:
    """The bytes of the messages after the header; a second header or a chunk over
    :data:`MAX_FORWARD_CHUNK_BYTES` is INVALID_ARGUMENT."""
    async for request in requests:
        if request.WhichOneof("payload") == "header":
            raise invalid_argument(
                [("header", "only the first message may be the header; send bytes after it")]
            )
        if len(request.data) > MAX_FORWARD_CHUNK_BYTES:
            raise invalid_argument(
                [
                    (
                        "data",
                        f"is {len(request.data)} bytes; send at most"
                        f" {MAX_FORWARD_CHUNK_BYTES} bytes per message",
                    )
                ]
            )
        if request.data:
            yield request.data
