"""``env shell``: this terminal connected to a pty process in an environment.

The local terminal goes into raw mode, so every key (Ctrl-C included) reaches
the remote shell as bytes; its output is written back unchanged. SIGWINCH
resizes the remote terminal. The terminal is restored on every way out.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import termios
import threading
import tty
from collections.abc import Iterator

from sandbox_sdk.cli.signal_wakeup import signals_written_to
from sandbox_sdk.client import Process, Sandbox
from sandbox_sdk.errors import SandboxError
from sandbox_sdk.models.processes import ProcessInfo

SHELL_ARGV = [
    "/bin/sh",
    "-c",
    "if [ -x /bin/bash ]; then exec /bin/bash -i; fi; exec /bin/sh -i",
]
"""The environment's shell: bash when the root file system has it, else sh."""

DEFAULT_SIZE = (24, 80)
READ_SIZE = 4096

# What the wake-up pipe carries to the input loop, besides signal numbers.
_OUTPUT_ENDED = b"x"
_RESIZED = bytes([signal.SIGWINCH])

# Signals that end the session early; the terminal is restored and the shell hung up.
_FATAL_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def terminal_size(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal on ``fd``, or 24x80 when it is not one."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return DEFAULT_SIZE
    rows, cols = size.lines, size.columns
    return (min(max(rows, 1), 1000), min(max(cols, 1), 1000)) if rows and cols else DEFAULT_SIZE


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """The terminal on ``fd`` in raw mode, restored as it was afterwards (no-op if none)."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)  # the default, TCSAFLUSH, drops what was typed ahead
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _ignore(_signum: int, _frame: object) -> None:
    pass  # a Python-level handler, so that signals_written_to reports the signal


@contextlib.contextmanager
def session_signals(wake: int) -> Iterator[None]:
    """SIGWINCH's number reaches ``wake`` (for a resize); SIGTERM and SIGHUP end the
    session through ``finally`` blocks, so the terminal is restored. Handlers restored after."""
    previous = {signal.SIGWINCH: signal.signal(signal.SIGWINCH, _ignore)}
    for signum in _FATAL_SIGNALS:
        previous[signum] = signal.signal(signum, _raise_exit)
    try:
        with signals_written_to(wake):
            yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _OutputPump(threading.Thread):
    """Copies the process's output to ``fd`` until it ends, then wakes the input loop."""

    def __init__(self, process: Process, fd: int, wake: int) -> None:
        super().__init__(daemon=True, name=f"shell-output-{process.id}")
        self.process = process
        self.fd = fd
        self.wake = wake
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.process.output() as stream:
                for chunk in stream:
                    _write_all(self.fd, chunk.data)
        except BaseException as error:  # handed to the main thread, which reports it
            self.error = error
        finally:
            with contextlib.suppress(OSError):
                os.write(self.wake, _OUTPUT_ENDED)


def _copy_input(process: Process, stdin_fd: int, wake: int, stdout_fd: int) -> None:
    """Sends what is typed to the process and resizes it on SIGWINCH, until its output ends."""
    watched = [stdin_fd, wake]
    while True:
        ready, _, _ = select.select(watched, [], [])
        if wake in ready:
            signals = os.read(wake, READ_SIZE)
            if _OUTPUT_ENDED in signals:
                return
            if _RESIZED in signals:
                with contextlib.suppress(SandboxError):
                    process.resize(*terminal_size(stdout_fd))
        if stdin_fd in ready:
            data = os.read(stdin_fd, READ_SIZE)
            try:
                if data:
                    process.write(data)
                else:
                    watched.remove(stdin_fd)  # stdin ended: tell the shell, keep its output
                    process.close_stdin()
            except SandboxError:
                if not process.refresh().running:
                    return  # it ended meanwhile; the pump reports its last output
                raise


def run_shell(sandbox: Sandbox, *, stdin_fd: int = 0, stdout_fd: int = 1) -> ProcessInfo:
    """Runs the environment's shell in a pty, connected to this terminal, until it exits;
    its final state. A session ended otherwise hangs the remote shell up."""
    term = os.environ.get("TERM") or "xterm-256color"
    process = sandbox.start(SHELL_ARGV, pty=terminal_size(stdout_fd), env={"TERM": term})
    wake_read, wake_write = os.pipe()
    pump = _OutputPump(process, stdout_fd, wake_write)
    finished = False
    try:
        with session_signals(wake_write), raw_mode(stdin_fd):
            pump.start()
            _copy_input(process, stdin_fd, wake_read, stdout_fd)
            pump.join()
        finished = True
    finally:
        if not finished:
            with contextlib.suppress(SandboxError):
                process.signal(signal.SIGHUP)
        if not pump.is_alive():  # else it may still write the pipe: never reuse its fd
            os.close(wake_read)
            os.close(wake_write)
    if pump.error is not None:
        raise pump.error
    return process.wait()
