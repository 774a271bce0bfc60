"""Commands run in an environment: their output chunks and how they ended."""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass, field

from sandbox_sdk.api.v1 import environment_pb2
from sandbox_sdk.errors import SandboxError
from sandbox_sdk.models._enums import enum_table
from sandbox_sdk.models.usage import ResourceUsage
from sandbox_sdk.utils.units import from_duration_pb


class ExitReason(enum.StrEnum):
    """How a command ended."""

    UNSPECIFIED = "UNSPECIFIED"
    EXITED = "EXITED"
    SIGNALED = "SIGNALED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    CPU_LIMIT = "CPU_LIMIT"
    CANCELLED = "CANCELLED"


_EXIT_REASONS = enum_table(environment_pb2.ExitReason.items(), "EXIT_REASON_", ExitReason)


def exit_reason(number: int) -> ExitReason:
    """The :class:`ExitReason` of a wire enum number (UNSPECIFIED when unknown)."""
    return _EXIT_REASONS.get(number, ExitReason.UNSPECIFIED)


class CommandFailedError(SandboxError):
    """A command run by :meth:`ExecResult.check` did not exit with status 0.

    ``result`` holds the full :class:`ExecResult`, output included.
    """

    def __init__(self, message: str, result: ExecResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True, slots=True)
class OutputChunk:
    """Bytes a running command wrote; ``stream`` is ``"stdout"`` or ``"stderr"``.

    ``sequence`` numbers a background process's output (resume after it with
    ``process.output(after_sequence=...)``); it is 0 for ``exec_stream``.
    """

    stream: str
    data: bytes
    sequence: int = 0

    @property
    def text(self) -> str:
        """The bytes decoded as UTF-8, undecodable bytes replaced."""
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class ExecResult:
    """The outcome of a command: its exit status, output and resource use."""

    argv: tuple[str, ...]
    exit_code: int
    reason: ExitReason
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    signal: int = 0
    pid: int = 0
    usage: ResourceUsage = field(default_factory=ResourceUsage)
    duration_seconds: float = 0.0
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def stdout(self) -> str:
        """Standard output decoded as UTF-8."""
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        """Standard error decoded as UTF-8."""
        return self.stderr_bytes.decode("utf-8", errors="replace")

    @property
    def ok(self) -> bool:
        """Whether the command exited by itself with status 0."""
        return self.reason is ExitReason.EXITED and self.exit_code == 0

    def check(self) -> ExecResult:
        """Returns ``self`` if the command succeeded, else raises :class:`CommandFailedError`."""
        if self.ok:
            return self
        how = (
            f"exited with status {self.exit_code}"
            if self.reason is ExitReason.EXITED
            else f"ended by {self.reason.value}"
            + (f" (signal {self.signal})" if self.signal else "")
        )
        tail = self.stderr.strip().splitlines()[-5:]
        detail = ("; stderr: " + " | ".join(tail)) if tail else ""
        raise CommandFailedError(
            f"command {shlex.join(self.argv)!r} {how}{detail}; "
            "inspect .result.stdout/.result.stderr or raise the limits if it was killed",
            self,
        )

    @classmethod
    def from_exit(
        cls,
        argv: tuple[str, ...],
        exited: environment_pb2.ExecExited,
        *,
        stdout: bytes,
        stderr: bytes,
        pid: int,
    ) -> ExecResult:
        """Builds the result from the stream's final ``ExecExited`` event."""
        return cls(
            argv=argv,
            exit_code=exited.exit_code,
            reason=_EXIT_REASONS.get(exited.reason, ExitReason.UNSPECIFIED),
            stdout_bytes=stdout,
            stderr_bytes=stderr,
            signal=exited.signal,
            pid=pid,
            usage=ResourceUsage.from_proto(exited.usage),
            duration_seconds=from_duration_pb(exited.duration),
            stdout_truncated=exited.stdout_truncated,
            stderr_truncated=exited.stderr_truncated,
        )
