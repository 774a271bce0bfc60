"""What the file-operation requests carry that the paths' own checks do not cover:
a directory's mode, and UploadDirectory's stream of messages."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sandbox_sdk.api.v1 import requests_pb2
from sandbox_sdk.server.status import invalid_argument

MAX_UPLOAD_CHUNK_BYTES = 1 << 20
_DEFAULT_DIRECTORY_MODE = 0o755


def directory_mode(mode: int) -> int:
    """A MakeDirectory mode: permission bits only; zero means 0755."""
    if mode & ~0o777:
        raise invalid_argument([("mode", "only permission bits (at most 0o777) are allowed")])
    return mode or _DEFAULT_DIRECTORY_MODE


async def first_upload_message(
    requests: AsyncIterator[requests_pb2.UploadDirectoryRequest],
) -> requests_pb2.UploadDirectoryRequest:
    """The message that names the environment and the destination."""
    first = await anext(requests, None)
    if first is None:
        raise invalid_argument(
            [("environment_id", "required: the first message names the environment")]
        )
    _require_small(first.chunk)
    return first


async def upload_chunks(
    first: requests_pb2.UploadDirectoryRequest,
    requests: AsyncIterator[requests_pb2.UploadDirectoryRequest],
) -> AsyncIterator[bytes]:
    """The tar stream's bytes: the first message's chunk, then every later one's.

    Later messages' environment_id and path are ignored: the first message's
    chose where the call went.
    """
    if first.chunk:
        yield first.chunk
    async for request in requests:
        _require_small(request.chunk)
        if request.chunk:
            yield request.chunk


def _require_small(chunk: bytes) -> None:
    if len(chunk) > MAX_UPLOAD_CHUNK_BYTES:
        raise invalid_argument(
            [
                (
                    "chunk",
                    f"is {len(chunk)} bytes; send the archive in chunks of at most"
                    f" {MAX_UPLOAD_CHUNK_BYTES} bytes",
                )
            ]
        )
