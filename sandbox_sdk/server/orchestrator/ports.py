"""What the experiment engine needs from the sandbox layer, and nothing more.

The sandbox package implements :class:`SandboxPort` (``SandboxManager.port``);
the experiments package depends only on this protocol, so either side can be
tested alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from sandbox_sdk.models.execution import ExitReason


@dataclass(frozen=True)
class CommandResult:
    """A finished command run inside an environment."""

    exit_code: int
    reason: ExitReason
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    cpu_seconds: float
    memory_peak_bytes: int
    duration_seconds: float


@dataclass(frozen=True)
class UsageSample:
    """An environment's resource use at one moment."""

    cpu_seconds: float
    cpu_percent: float
    memory_bytes: int
    memory_peak_bytes: int
    pids: int
    disk_bytes: int


class SandboxPort(Protocol):
    """The sandbox operations experiments use."""

    def require_running(self, tenant: str, environment_id: str) -> None:
        """Raises ServiceError NOT_FOUND (unknown or another tenant's) or
        FAILED_PRECONDITION (not RUNNING)."""

    async def run_command(
        self,
        environment_id: str,
        argv: Sequence[str],
        *,
        stdin: bytes = b"",
        timeout: float = 10.0,
        env_vars: Mapping[str, str] | None = None,
        output_limit_bytes: int = 1 << 20,
    ) -> CommandResult:
        """Runs a command in the environment's sandbox and waits for it."""
        ...

    def read_file(self, environment_id: str, path: str) -> bytes:
        """Reads a workspace file; ServiceError INVALID_ARGUMENT or NOT_FOUND on bad paths."""
        ...

    def exec_timeout_seconds(self, environment_id: str) -> float:
        """The environment's exec timeout: the longest a command in it may run."""
        ...

    def usage(self, environment_id: str) -> UsageSample:
        """The environment's latest usage sample."""
        ...

    def touch(self, environment_id: str) -> None:
        """Records activity, which postpones idle expiry."""

    def on_terminated(self, callback: Callable[[str], None]) -> None:
        """Calls ``callback(environment_id)`` when an environment ends for any reason."""
