"""What blocking gRPC does differently from asyncio: the channel, reading a stream, sleeping.

Hand-written, the twin of ``_async/glue.py``; every other module in this
package is generated from ``_async/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from sandbox_sdk.client.channel import open_channel as open_sync_channel
from sandbox_sdk.config.settings import ClientSettings
from sandbox_sdk.utils.deprecation import MethodOnceProperty

Channel = grpc.Channel
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def open_channel(settings: ClientSettings) -> grpc.Channel:
    """A blocking channel to ``settings.target``."""
    return open_sync_channel(settings)


def close_channel(channel: grpc.Channel) -> None:
    """Closes the channel, cancelling calls in flight."""
    channel.close()


def next_message(call: Any) -> Any | None:
    """The stream's next response, or ``None`` once the server has ended it."""
    return next(call, None)


def sleep(seconds: float) -> None:
    """Blocks for ``seconds``."""
    time.sleep(seconds)


def off_loop(function: Callable[..., T], *args: Any) -> T:
    """Runs blocking work here: a blocking client has no event loop to keep free."""
    return function(*args)


def was_a_sync_property(method: F) -> F:
    """A method that was a property in the first sync client (``stream.result``,
    ``experiment.status``): call it; using it as a value still works, with a
    :class:`DeprecationWarning`."""
    return MethodOnceProperty.wrap(method)
