"""Background processes of an environment: where each is in its life and how it ended."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from sandbox_sdk.api.v1 import process_pb2
from sandbox_sdk.models._enums import enum_table
from sandbox_sdk.models.execution import ExitReason, exit_reason
from sandbox_sdk.models.usage import ResourceUsage
from sandbox_sdk.utils.units import from_timestamp_pb


class ProcessState(enum.StrEnum):
    """Where a process is: RUNNING, then EXITED, KILLED or FAILED_TO_START."""

    UNSPECIFIED = "UNSPECIFIED"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    KILLED = "KILLED"
    FAILED_TO_START = "FAILED_TO_START"

    @property
    def is_final(self) -> bool:
        """Whether the process has ended (or never started)."""
        return self in (ProcessState.EXITED, ProcessState.KILLED, ProcessState.FAILED_TO_START)


_STATES = enum_table(process_pb2.ProcessState.items(), "PROCESS_STATE_", ProcessState)


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A snapshot of a background process; once it has ended, also its result.

    ``exit_code`` is the exit status when it EXITED (else -1), ``signal`` the
    signal that ended it (else 0), ``reason`` how it ended, ``usage`` its CPU
    time and peak memory (set once it has ended).
    """

    id: str
    environment_id: str
    argv: tuple[str, ...]
    state: ProcessState
    pid: int = 0
    cwd: str = ""
    exit_code: int = -1
    signal: int = 0
    reason: ExitReason = ExitReason.UNSPECIFIED
    usage: ResourceUsage = field(default_factory=ResourceUsage)
    start_time: datetime | None = None
    end_time: datetime | None = None
    pty: bool = False
    stdin_open: bool = False
    start_error: str = ""

    @property
    def running(self) -> bool:
        """Whether it is still running."""
        return self.state is ProcessState.RUNNING

    @property
    def ok(self) -> bool:
        """Whether it exited by itself with status 0."""
        return self.state is ProcessState.EXITED and self.exit_code == 0

    @property
    def duration_seconds(self) -> float:
        """Seconds from start to end; 0 while it runs."""
        if self.start_time is None or self.end_time is None:
            return 0.0
        return max((self.end_time - self.start_time).total_seconds(), 0.0)

    @classmethod
    def from_proto(cls, message: process_pb2.Process) -> ProcessInfo:
        """Converts the wire form; unknown enum numbers become UNSPECIFIED."""
        return cls(
            id=message.id,
            environment_id=message.environment_id,
            argv=tuple(message.argv),
            state=_STATES.get(message.state, ProcessState.UNSPECIFIED),
            pid=message.pid,
            cwd=message.cwd,
            exit_code=message.exit_code,
            signal=message.signal,
            reason=exit_reason(message.termination_reason),
            usage=ResourceUsage(
                cpu_seconds=message.cpu_seconds, memory_peak_bytes=message.max_rss_bytes
            ),
            start_time=from_timestamp_pb(message.start_time),
            end_time=from_timestamp_pb(message.end_time),
            pty=message.pty,
            stdin_open=message.stdin_open,
            start_error=message.start_error,
        )
