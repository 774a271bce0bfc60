"""Running a host tool of a template build, its output delivered line by line."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping, Sequence

BuildLog = Callable[[str], None]
"""Receives a template build's log, one line (without its newline) at a time."""

_MAX_LINE_BYTES = 64 << 10
_ERROR_LINES = 3
_ERROR_BYTES = 600


class TemplateBuildError(Exception):
    """A template build failed; the message says which step and why."""


async def run_logged(
    argv: Sequence[str], *, env: Mapping[str, str], on_log: BuildLog, what: str
) -> None:
    """Runs ``argv`` (stdin closed), passing each line of its output to ``on_log``.

    Raises :class:`TemplateBuildError` naming ``what`` if it fails; a
    cancelled build kills it.
    """
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            limit=_MAX_LINE_BYTES,
        )
    except OSError as error:
        raise TemplateBuildError(f"{what} could not start: {error}") from error
    last_lines: deque[str] = deque(maxlen=_ERROR_LINES)
    try:
        assert process.stdout is not None  # noqa: S101  (asked for a pipe)
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # a line longer than the limit: deliver what there is
                line = await process.stdout.read(_MAX_LINE_BYTES)
            if not line:
                break
            text = line.decode(errors="replace").rstrip("\n")
            last_lines.append(text)
            on_log(text)
        returncode = await process.wait()
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    if returncode != 0:
        tail = " | ".join(last_lines)[-_ERROR_BYTES:]
        raise TemplateBuildError(f"{what} failed (exit status {returncode}): {tail}")
