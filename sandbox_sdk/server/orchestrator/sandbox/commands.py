"""One command in an environment: how it is launched, contained, and how it ended."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import psutil

from sandbox_sdk.server.orchestrator.sandbox.bubblewrap import bwrap_command
from sandbox_sdk.server.orchestrator.sandbox.cgroups import ExecCgroup
from sandbox_sdk.server.orchestrator.sandbox.isolation import Isolation
from sandbox_sdk.server.orchestrator.sandbox.model import (
    Command,
    EnvironmentSpec,
    ExecExited,
    ExitReason,
)
from sandbox_sdk.server.orchestrator.sandbox.monitor import sample_tree_until
from sandbox_sdk.server.orchestrator.sandbox.process import Launch, ProcessExit
from sandbox_sdk.server.orchestrator.sandbox.rlimits import ProcessLimits
from sandbox_sdk.server.orchestrator.sandbox.workspace import WorkspaceLayout

ENVIRONMENT_ID_VARIABLE = "SANDBOX_ENVIRONMENT_ID"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MAX_SIGNAL = 64


class RunningCommand:
    """One command in flight: its cgroup, its cancel event and, without cgroups, a sampler."""

    def __init__(self, environment_id: str, cgroup: ExecCgroup | None) -> None:
        self.environment_id = environment_id
        self.cgroup = cgroup
        self.cancel = asyncio.Event()
        self.pid: int | None = None
        self._stop_sampling = asyncio.Event()
        self._sampler: asyncio.Task[tuple[float, int]] | None = None

    def contain(self, pid: int) -> None:
        """Puts the gated first process into the command's cgroup.

        Raises FileNotFoundError when the environment is going away.
        """
        if self.cancel.is_set():
            raise FileNotFoundError("the environment is terminating")
        if self.cgroup is not None:
            self.cgroup.attach(pid)
        else:
            self._sampler = asyncio.create_task(sample_tree_until(pid, self._stop_sampling))
        self.pid = pid

    def kill_tree(self, process_group: int) -> None:
        """SIGKILLs every process of the command: its cgroup's, else its process group's."""
        if self.cgroup is not None:
            self.cgroup.signal_all()
        else:
            kill_marked_processes(self.environment_id, process_group)

    async def usage(self) -> tuple[float, int, int]:
        """CPU seconds, peak memory and OOM kills of the command's tree."""
        self._stop_sampling.set()
        if self.cgroup is not None:
            counters = self.cgroup.counters()
            return counters.cpu_seconds, counters.memory_peak_bytes, counters.oom_kills
        if self._sampler is None:
            return 0.0, 0, 0
        cpu_seconds, memory_peak_bytes = await self._sampler
        return cpu_seconds, memory_peak_bytes, 0

    async def close(self) -> None:
        """Stops sampling and kills whatever is left of the command."""
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.cancel()
        if self.cgroup is not None:
            await self.cgroup.kill_all()


def kill_marked_processes(environment_id: str, process_group: int | None = None) -> None:
    """Without cgroups: kills the processes whose environment names the environment.

    The marker, not the pid or group number alone, decides, so a reused pid
    is never hit. ``process_group`` narrows it to one command's group.
    """
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if process_group is not None and os.getpgid(process.pid) != process_group:
                continue
            if process.environ().get(ENVIRONMENT_ID_VARIABLE) == environment_id:
                process.send_signal(signal.SIGKILL)


def launch(
    isolation: Isolation,
    command: Command,
    *,
    environment_id: str,
    spec: EnvironmentSpec,
    layout: WorkspaceLayout,
    system_mounts: Sequence[str],
    cwd: Sequence[str],
    limits: ProcessLimits,
    chunk_bytes: int,
) -> Launch:
    """How to start ``command``: inside bubblewrap when there is one, as the sandbox uid.

    Commands see a fixed PATH, HOME and TMPDIR, then the environment's and the
    command's variables, and always ``SANDBOX_ENVIRONMENT_ID`` (which is how
    the orchestrator finds their processes when there are no cgroups).
    """
    if isolation.bwrap_path:
        home, tmp = "/workspace", "/tmp"  # noqa: S108  (inside the sandbox)
        argv = isolation.drop_privileges() + bwrap_command(
            isolation.bwrap_path,
            system=system_mounts,
            workspace_dir=layout.files_dir,
            tmp_dir=layout.tmp_dir,
            cwd="/".join(cwd),
            network=spec.network,
            command=command.argv,
        )
        gate_cwd = Path("/")
    else:
        home, tmp = str(layout.files_dir), str(layout.tmp_dir)
        argv = isolation.drop_privileges() + list(command.argv)
        gate_cwd = layout.files_dir.joinpath(*cwd)
    env: dict[str, str] = {"PATH": _PATH, "HOME": home, "TMPDIR": tmp, "LANG": "C.UTF-8"}
    env |= spec.env_vars
    env |= command.env_vars
    env[ENVIRONMENT_ID_VARIABLE] = environment_id
    return Launch(
        argv=argv,
        limits_script=limits.shell_commands(),
        env=env,
        cwd=gate_cwd,
        stdin=command.stdin,
        timeout_seconds=command.timeout_seconds or spec.limits.exec_timeout_seconds,
        output_cap_bytes=command.output_cap_bytes,
        chunk_bytes=chunk_bytes,
    )


def decode_status(returncode: int, via_bubblewrap: bool) -> tuple[int, int]:
    """(exit code, signal) of a command, from its first process's return code.

    bubblewrap reports a signal-killed command as exit status 128+N, as shells
    do; so does this, which makes a command that exits with such a status
    itself look signalled.
    """
    if returncode < 0:
        return -1, -returncode
    if via_bubblewrap and 128 < returncode <= 128 + _MAX_SIGNAL:
        return -1, returncode - 128
    return returncode, 0


def exit_event(
    event: ProcessExit,
    usage: tuple[float, int, int],
    limits: ProcessLimits,
    via_bubblewrap: bool,
) -> ExecExited:
    """Classifies how a command ended; ``usage`` is (CPU seconds, peak memory, OOM kills)."""
    cpu_seconds, memory_peak_bytes, oom_kills = usage
    code, signal_number = decode_status(event.returncode, via_bubblewrap)
    failed = signal_number != 0 or code != 0
    if event.cancelled:
        reason = ExitReason.CANCELLED
    elif event.timed_out:
        reason = ExitReason.TIMEOUT
    elif oom_kills and failed:
        reason = ExitReason.OUT_OF_MEMORY
    elif signal_number == signal.SIGXCPU or (
        signal_number == signal.SIGKILL and cpu_seconds >= limits.cpu_seconds
    ):
        reason = ExitReason.CPU_LIMIT
    elif signal_number:
        reason = ExitReason.SIGNALED
    else:
        reason = ExitReason.EXITED
    return ExecExited(
        exit_code=code if reason is ExitReason.EXITED else -1,
        signal=signal_number,
        reason=reason,
        cpu_seconds=cpu_seconds,
        memory_peak_bytes=memory_peak_bytes,
        duration_seconds=event.duration_seconds,
        stdout_truncated=event.stdout_truncated,
        stderr_truncated=event.stderr_truncated,
    )
