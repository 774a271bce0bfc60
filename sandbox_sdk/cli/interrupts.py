"""Where Ctrl-C is raised: outside grpc, and not while a command starts what it must
clean up.

Python raises ``KeyboardInterrupt`` in the main thread wherever that thread
happens to be. Raised inside grpc's set-up of a call (Cython code part way
through its bookkeeping), it leaves a call registered that nothing will ever
finish; the channel can no longer close, and the command line hung after Ctrl-C
about once in twenty runs (grpc/grpc#19973). Raised while a call that creates
something is in flight, it loses the answer, so the command cannot undo what it
created.

Under :func:`interrupts_outside_grpc` Ctrl-C raises at once when the main thread
is outside grpc, or inside grpc's own interruptible wait for a response;
otherwise it looks again every few milliseconds until the thread has left grpc.
Inside :func:`interrupts_held` it is raised when the block ends. A second Ctrl-C
while the first waits raises at once: the user insists. The guard owns SIGALRM
while it runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import grpc

GRPC_DIRECTORY = os.path.dirname(grpc.__file__) + os.sep
INTERRUPTIBLE_WAIT_FILE = os.path.join(GRPC_DIRECTORY, "_common.py")
INTERRUPTIBLE_WAIT_FUNCTIONS = frozenset({"wait", "_wait_once"})
"""grpc's wait for a response (``grpc._common.wait``) wakes up every 100 ms so
that signal handlers can run: raising there is what grpc expects."""

RECHECK_SECONDS = 0.005


def innermost_grpc_frame(frame: FrameType | None) -> FrameType | None:
    """The innermost frame of grpc's Python code on the stack ending at ``frame``."""
    while frame is not None:
        if frame.f_code.co_filename.startswith(GRPC_DIRECTORY):
            return frame
        frame = frame.f_back
    return None


def may_interrupt(frame: FrameType | None) -> bool:
    """Whether raising ``KeyboardInterrupt`` at ``frame`` leaves grpc's state whole."""
    found = innermost_grpc_frame(frame)
    if found is None:
        return True
    code = found.f_code
    return code.co_filename == INTERRUPTIBLE_WAIT_FILE and code.co_name in (
        INTERRUPTIBLE_WAIT_FUNCTIONS
    )


class DeferredInterrupt:
    """The SIGINT handler, the SIGALRM one that looks again while Ctrl-C waits, and
    the count of :func:`interrupts_held` blocks running."""

    def __init__(self) -> None:
        self.pending = False
        self.holds = 0

    def on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self.pending or (not self.holds and may_interrupt(frame)):
            self.raise_now()
        self.pending = True
        if not self.holds:
            signal.setitimer(signal.ITIMER_REAL, RECHECK_SECONDS)

    def on_recheck(self, signum: int, frame: FrameType | None) -> None:
        if not self.pending or self.holds:
            return
        if may_interrupt(frame):
            self.raise_now()
        signal.setitimer(signal.ITIMER_REAL, RECHECK_SECONDS)

    def raise_now(self) -> None:
        self.pending = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        raise KeyboardInterrupt


def _installed() -> DeferredInterrupt | None:
    owner = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
    return owner if isinstance(owner, DeferredInterrupt) else None


@contextlib.contextmanager
def interrupts_outside_grpc() -> Iterator[None]:
    """While the block runs in the main thread, Ctrl-C raises only outside grpc.

    Does nothing when SIGINT is not Python's default handler (ignored, say, in a
    background job), when called from another thread, or where there is no interval
    timer (Windows).
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    if (
        not in_main_thread
        or not hasattr(signal, "setitimer")
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    deferred = DeferredInterrupt()
    previous_alarm = signal.signal(signal.SIGALRM, deferred.on_recheck)
    signal.signal(signal.SIGINT, deferred.on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_alarm)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """A Ctrl-C during the block is raised when it ends, so that a call creating
    something returns what it created and the caller can clean it up. Needs
    :func:`interrupts_outside_grpc` around it; without, Ctrl-C raises as usual."""
    deferred = _installed()
    if deferred is None:
        yield
        return
    deferred.holds += 1
    try:
        yield
    finally:
        deferred.holds -= 1
        if not deferred.holds and deferred.pending:
            deferred.raise_now()
