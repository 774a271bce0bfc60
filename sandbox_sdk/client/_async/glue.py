"""What asyncio does differently from blocking gRPC: the channel, reading a stream, sleeping.

Hand-written, with a blocking twin in ``_sync/glue.py``; the rest of the
client is written once, here in ``_async/``, and generated for sync.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import grpc.aio

from sandbox_sdk.client.channel import open_aio_channel
from sandbox_sdk.config.settings import ClientSettings

Channel = grpc.aio.Channel
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def open_channel(settings: ClientSettings) -> grpc.aio.Channel:
    """An asyncio channel to ``settings.target``."""
    return open_aio_channel(settings)


async def close_channel(channel: grpc.aio.Channel) -> None:
    """Closes the channel, cancelling calls in flight."""
    await channel.close(None)


async def next_message(call: Any) -> Any | None:
    """The stream's next response, or ``None`` once the server has ended it."""
    message = await call.read()
    return None if message is grpc.aio.EOF else message  # type: ignore[attr-defined]


async def sleep(seconds: float) -> None:
    """Waits without blocking the event loop."""
    await asyncio.sleep(seconds)


async def off_loop(function: Callable[..., T], *args: Any) -> T:
    """Runs blocking work (local files, tar archives) on a thread, so the loop goes on."""
    return await asyncio.to_thread(function, *args)


def was_a_sync_property(method: F) -> F:
    """Marks a method that the sync client once offered as a property.

    Nothing to do here: the asyncio client always had these as coroutines.
    """
    return method
