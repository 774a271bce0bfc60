"""Waking the main thread for a signal whichever thread the kernel delivered it to.

gRPC runs threads of its own, and a signal may land on any of them: Python then
runs its handler only once the main thread next executes bytecode, which a main
thread blocked in ``select`` or a lock never does. ``signal.set_wakeup_fd``
makes the C-level handler write the signal's number to a pipe, from any thread;
a main thread that selects on that pipe wakes up and runs the handler.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def signals_written_to(write_end: int) -> Iterator[None]:
    """While the block runs, the number of every signal Python handles is written to
    ``write_end`` (made non-blocking), from whichever thread received it."""
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)


def wait_for_interrupt() -> None:
    """Blocks until Ctrl-C (SIGINT), which raises KeyboardInterrupt here as usual."""
    read_end, write_end = os.pipe()
    try:
        with signals_written_to(write_end):
            while True:
                select.select([read_end], [], [])
                os.read(read_end, 512)  # the handler runs, and raises, once this returns
    finally:
        os.close(read_end)
        os.close(write_end)
