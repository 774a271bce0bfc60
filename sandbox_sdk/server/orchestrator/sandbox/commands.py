"""One command in an environment: how it and its environment's agent are launched, how it ended."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import psutil

from sandbox_sdk.server.orchestrator.sandbox import agent_code
from sandbox_sdk.server.orchestrator.sandbox.agent_client import AgentLaunch, SpawnRequest
from sandbox_sdk.server.orchestrator.sandbox.agent_runtime import AgentRuntime
from sandbox_sdk.server.orchestrator.sandbox.bubblewrap import (
    TMP_MOUNT,
    WORKSPACE_MOUNT,
    RootMount,
    bwrap_command,
)
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Command,
    EnvironmentSpec,
    ExecExited,
    ExitReason,
)
from sandbox_sdk.server.orchestrator.sandbox.host_env import HOST_PATH, host_process_env
from sandbox_sdk.server.orchestrator.sandbox.isolation import Isolation
from sandbox_sdk.server.orchestrator.sandbox.process import Cancellation, ProcessExit
from sandbox_sdk.server.orchestrator.sandbox.rlimits import ProcessLimits
from sandbox_sdk.server.orchestrator.sandbox.workspace import WorkspaceLayout

ENVIRONMENT_ID_VARIABLE = "SANDBOX_ENVIRONMENT_ID"
_MAX_SIGNAL = 64


class RunningCommand:
    """One command in flight: its cancel event and, once started, its pid."""

    def __init__(self) -> None:
        self.cancel = Cancellation()
        self.pid: int | None = None


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


def _environment_variables(
    spec: EnvironmentSpec, environment_id: str, home: str, tmp: str
) -> dict[str, str]:
    env: dict[str, str] = {"PATH": HOST_PATH, "HOME": home, "TMPDIR": tmp, "LANG": "C.UTF-8"}
    env |= spec.env_vars
    env[ENVIRONMENT_ID_VARIABLE] = environment_id
    return env


def _homes(isolation: Isolation, layout: WorkspaceLayout) -> tuple[str, str]:
    if isolation.bwrap_path:
        return str(WORKSPACE_MOUNT), str(TMP_MOUNT)
    return str(layout.files_dir), str(layout.tmp_dir)


def agent_launch(
    isolation: Isolation,
    *,
    environment_id: str,
    spec: EnvironmentSpec,
    layout: WorkspaceLayout,
    system_mounts: Sequence[str],
    limits: ProcessLimits,
    python: str,
    seccomp_fd: int | None = None,
    info_fd: int | None = None,
    resolv_conf: Path | None = None,
    root: RootMount | None = None,
    runtime: AgentRuntime | None = None,
) -> AgentLaunch:
    """How to start the environment's agent: in bubblewrap when there is one, as the sandbox uid.

    The agent runs ``python -I -S -c <bootstrap> <its code>``: the system
    interpreter, which the sandbox can read, and no file of the orchestrator's;
    its code is compiled ahead when it could be (see :mod:`.agent_code`).
    Everything up to it runs on the host with the fixed host environment; the
    environment's own variables are applied by the agent, per command
    (:func:`spawn_request`).
    ``seccomp_fd`` holds bubblewrap's filter and ``info_fd`` gets the sandbox's
    pid (both owned by the launch from here on); ``resolv_conf`` is the egress
    network's resolver configuration. With a template ``root`` the agent runs on
    the host's interpreter bound into it (``runtime``, see :mod:`.agent_runtime`).
    """
    agent_args = [*agent_code.compiled(python).interpreter_arguments(), "sandbox-agent"]
    agent_argv = [python, *agent_args]
    if root is not None:
        if runtime is None or not isolation.bwrap_path:
            raise ValueError("a template root needs bubblewrap and the agent's runtime")
        agent_argv = runtime.command(*agent_args)
    if isolation.bwrap_path:
        argv = isolation.drop_privileges() + bwrap_command(
            isolation.bwrap_path,
            system=system_mounts,
            workspace_dir=layout.files_dir,
            tmp_dir=layout.tmp_dir,
            cwd="",
            network=spec.network,
            command=agent_argv,
            seccomp_fd=seccomp_fd,
            info_fd=info_fd,
            resolv_conf=resolv_conf,
            root=root,
        )
    else:
        argv = isolation.drop_privileges() + agent_argv
    return AgentLaunch(
        argv=argv,
        limits=limits.gate_arguments(),
        env=host_process_env(**{ENVIRONMENT_ID_VARIABLE: environment_id}),
        pass_fds=tuple(fd for fd in (seccomp_fd, info_fd) if fd is not None),
    )


def spawn_request(
    isolation: Isolation,
    command: Command,
    *,
    environment_id: str,
    spec: EnvironmentSpec,
    layout: WorkspaceLayout,
    cwd: Sequence[str],
    limits: ProcessLimits,
) -> SpawnRequest:
    """What the agent starts for ``command``.

    Commands see a fixed PATH, HOME and TMPDIR, then the environment's and the
    command's variables, and always ``SANDBOX_ENVIRONMENT_ID`` (which is how
    the orchestrator finds their processes when there are no cgroups).
    """
    home, tmp = _homes(isolation, layout)
    root = WORKSPACE_MOUNT if isolation.bwrap_path else layout.files_dir
    env = _environment_variables(spec, environment_id, home, tmp)
    env |= command.env_vars
    env[ENVIRONMENT_ID_VARIABLE] = environment_id
    return SpawnRequest(
        argv=command.argv,
        cwd=str(root.joinpath(*cwd)),
        env=env,
        rlimits=limits.rlimits(),
    )


def decode_status(returncode: int) -> tuple[int, int]:
    """(exit code, signal) of a command, from its first process's return code.

    A shell whose child was killed by signal N exits with status 128+N; that
    is reported as the signal (as bubblewrap-wrapped commands always were),
    which makes a command that exits with such a status itself look signalled.
    """
    if returncode < 0:
        return -1, -returncode
    if 128 < returncode <= 128 + _MAX_SIGNAL:
        return -1, returncode - 128
    return returncode, 0


def exit_event(event: ProcessExit, oom_kills: int, limits: ProcessLimits) -> ExecExited:
    """Classifies how a command ended.

    ``oom_kills`` counts the environment's OOM kills while it ran: a failed
    command with any is reported OUT_OF_MEMORY.
    """
    code, signal_number = decode_status(event.returncode)
    failed = signal_number != 0 or code != 0
    cpu_seconds = event.cpu_seconds
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
        memory_peak_bytes=event.max_rss_bytes,
        duration_seconds=event.duration_seconds,
        stdout_truncated=event.stdout_truncated,
        stderr_truncated=event.stderr_truncated,
    )
