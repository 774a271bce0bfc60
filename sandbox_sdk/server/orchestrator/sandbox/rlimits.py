"""Per-process resource limits, the innermost isolation layer.

The environment's agent starts behind a shell already running as the sandbox
uid, which lowers the shared limits with its ``ulimit`` builtin before it
``exec``s anything; the agent lowers each command's own (CPU time above all)
with ``prlimit(2)`` right after spawning it. (Lowering needs no privilege, and
the command has the agent's uid; setting another uid's limits would need
CAP_SYS_RESOURCE, which containers often drop.)
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass

from sandbox_sdk.server.orchestrator.sandbox.environment_record import Limits


@dataclass(frozen=True)
class ProcessLimits:
    """The rlimits one command runs under.

    ``cpu_seconds`` is the soft RLIMIT_CPU: the kernel sends SIGXCPU there and
    SIGKILL one second later (the hard limit).
    """

    address_space_bytes: int
    cpu_seconds: int
    file_size_bytes: int
    open_files: int
    processes: int | None = None

    @classmethod
    def for_environment(
        cls,
        limits: Limits,
        *,
        address_space_headroom_bytes: int,
        open_files: int,
        limit_processes_per_uid: bool,
    ) -> ProcessLimits:
        """The rlimits of a command in an environment with ``limits``.

        CPU time is bounded by what the environment's quota allows over its
        default exec timeout (cores x seconds): a caller that extends one
        command's wall-clock timeout waits longer, but gets no more CPU.
        The address space gets headroom over the memory limit because virtual
        memory is not resident memory; the cgroup enforces the real limit.
        ``limit_processes_per_uid`` adds RLIMIT_NPROC, a weak stand-in for the
        pids cgroup when there is none (it counts every process of the uid).
        """
        return cls(
            address_space_bytes=limits.memory_bytes + address_space_headroom_bytes,
            cpu_seconds=max(1, math.ceil(limits.cpu_cores * limits.exec_timeout_seconds)),
            file_size_bytes=limits.disk_bytes,
            open_files=open_files,
            processes=limits.max_pids if limit_processes_per_uid else None,
        )

    def gate_arguments(self) -> list[str]:
        """The start gate's ``ulimit`` values for the limits every process of the
        environment shares (all but CPU time, which counts per process and so is
        set per command): address space in KiB, file size in 512-byte blocks, open
        files, and processes or ``-`` for none.

        They are numbers the orchestrator computed, passed to a fixed script as
        positional parameters, never as script text. Values above what the
        orchestrator itself may use are clamped to that, since an unprivileged
        process can only lower its limits.
        """
        processes = (
            "-" if self.processes is None else str(_clamp(resource.RLIMIT_NPROC, self.processes))
        )
        return [
            str(_clamp(resource.RLIMIT_AS, self.address_space_bytes) // 1024),
            str(_clamp(resource.RLIMIT_FSIZE, self.file_size_bytes) // 512),
            str(_clamp(resource.RLIMIT_NOFILE, self.open_files)),
            processes,
        ]

    def rlimits(self) -> list[tuple[str, int, int]]:
        """``(RLIMIT_* name, soft, hard)`` of one command, which its agent sets as it starts it.

        The agent can only lower them, so they are at most the environment's.
        """
        limits = [
            ("RLIMIT_CPU", self.cpu_seconds, self.cpu_seconds + 1),
            ("RLIMIT_AS", self.address_space_bytes, self.address_space_bytes),
            ("RLIMIT_FSIZE", self.file_size_bytes, self.file_size_bytes),
            ("RLIMIT_NOFILE", self.open_files, self.open_files),
            ("RLIMIT_CORE", 0, 0),
        ]
        if self.processes is not None:
            limits.append(("RLIMIT_NPROC", self.processes, self.processes))
        return limits


def _clamp(limit: int, value: int) -> int:
    """``value``, or the orchestrator's own hard limit if that is lower."""
    _, hard = resource.getrlimit(limit)
    return value if hard == resource.RLIM_INFINITY else min(value, hard)
