"""What blocking gRPC does differently from asyncio: the channel, reading a stream, sleeping.

Hand-written, the twin of ``_async/glue.py``; every other module in this
package is generated from ``_async/``.
"""

from __future__ import annotations

import logging
import threading
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

CLOSE_TIMEOUT_SECONDS = 5.0
"""How long closing a channel may wait for its calls to be cancelled; it takes
milliseconds unless a call's set-up was cut short (see :func:`close_channel`)."""

log = logging.getLogger("sandbox_sdk.client")


def open_channel(settings: ClientSettings) -> grpc.Channel:
    """A blocking channel to ``settings.target``."""
    return open_sync_channel(settings)


def close_channel(channel: grpc.Channel) -> None:
    """Closes the channel, cancelling calls in flight, and returns within
    :data:`CLOSE_TIMEOUT_SECONDS`.

    grpc's close waits until every call it registered has finished. An exception
    raised in the middle of a call's set-up (Ctrl-C landing there) leaves one
    registered that nothing will finish, and the close would wait forever
    (grpc/grpc#19973). So the close runs on a helper thread; if it has not
    finished in time it is left to itself, with a warning, and the program goes on.
    """
    closing = threading.Thread(target=channel.close, name="sandbox-sdk-close", daemon=True)
    try:
        closing.start()
    except RuntimeError:  # at interpreter shutdown (an atexit handler, say) no thread starts
        channel.close()
        return
    closing.join(CLOSE_TIMEOUT_SECONDS)
    if closing.is_alive():
        log.warning(
            "closing a gRPC channel did not finish in %g s: a call was interrupted while"
            " gRPC was setting it up (grpc/grpc#19973). The channel is left to close on"
            " its own; nothing is needed from you unless this repeats, then report it.",
            CLOSE_TIMEOUT_SECONDS,
        )


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
