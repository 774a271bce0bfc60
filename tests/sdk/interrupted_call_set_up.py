"""Run as a script: Ctrl-C delivered while grpc sets up a server-streaming call, then
the channel closed. Prints one JSON line: where the KeyboardInterrupt surfaced and
whether, and how fast, the close returned.

``--guard`` runs the call under the command line's ``interrupts_outside_grpc``;
``--sdk-close`` closes with the SDK's ``close_channel`` (its timeout shortened)
instead of grpc's own ``close``. The signal is raised by the channel's own lock, at
the end of the first critical section entered after the call is asked for: inside
grpc's Cython set-up of the call, where an ordinary Ctrl-C can land by chance.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from sandbox_sdk.cli import interrupts
from sandbox_sdk.client._sync import glue

PlainCondition = threading.Condition


class InterruptingCondition(PlainCondition):
    """Raises SIGINT on leaving the first ``with`` block after being armed."""

    armed = False

    def __exit__(self, *exc_info: Any) -> None:
        super().__exit__(*exc_info)
        if InterruptingCondition.armed:
            InterruptingCondition.armed = False
            signal.raise_signal(signal.SIGINT)


def _quiet_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    while context.is_active():
        time.sleep(0.02)
    yield from ()


def _server() -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    handler = grpc.unary_stream_rpc_method_handler(_quiet_stream)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.T", {"S": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def _channel_with_interrupting_lock(port: int) -> grpc.Channel:
    threading.Condition = InterruptingCondition  # type: ignore[misc]
    try:
        return grpc.insecure_channel(f"127.0.0.1:{port}")
    finally:
        threading.Condition = PlainCondition  # type: ignore[misc]


def _surfaced_at(error: BaseException) -> dict[str, str]:
    """The innermost frame of the traceback that is not the handler's or the lock's."""
    skipped = (interrupts.__file__, __file__, threading.__file__)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename not in skipped]
    innermost = frames[-1]
    return {"file": innermost.filename, "function": innermost.name}


def _interrupt_call_set_up(channel: grpc.Channel, guard: bool) -> dict[str, str]:
    method = channel.unary_stream("/t.T/S")
    guarded = interrupts.interrupts_outside_grpc()
    try:
        with guarded if guard else contextlib.nullcontext():
            InterruptingCondition.armed = True
            call = method(b"")
            next(call)
    except KeyboardInterrupt as error:
        return _surfaced_at(error)
    raise AssertionError("no KeyboardInterrupt")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--guard", action="store_true")
    parser.add_argument("--sdk-close", action="store_true")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    server, port = _server()
    channel = _channel_with_interrupting_lock(port)
    surfaced = _interrupt_call_set_up(channel, arguments.guard)
    started = time.monotonic()
    if arguments.sdk_close:
        glue.CLOSE_TIMEOUT_SECONDS = 0.5
        glue.close_channel(channel)
    else:
        channel.close()
    closing = [t for t in threading.enumerate() if t.name == "sandbox-sdk-close"]
    report = {
        "surfaced": surfaced,
        "close_returned_after": time.monotonic() - started,
        "channel_closed": not closing,
    }
    print(json.dumps(report), flush=True)
    server.stop(0)


if __name__ == "__main__":
    main()
