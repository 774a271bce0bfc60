"""Isolation runtimes: what an environment's sandbox is made of, bubblewrap or gVisor.

A runtime prepares an environment's sandbox and says how to start its agent
(the argv, what the sandbox sees, where its limits apply, whether the agent
may send fds back), and names itself in the isolation level. Everything else
an environment does is the same under every runtime, because it goes through
one of three things every runtime provides: commands and processes through
the agent (:mod:`.agent_client`), files through the workspace and root the
host mounted for it (:mod:`.environment_files`), and usage, limits and kills
through its cgroups (:mod:`.cgroups`). A microVM runtime would be a third
implementation: docs/security.md says what it would take.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from sandbox_sdk.models.environment import IsolationRuntime
from sandbox_sdk.server.orchestrator.sandbox import agent_code
from sandbox_sdk.server.orchestrator.sandbox.agent_client import (
    AgentLaunch,
    agent_arguments,
    agent_source,
)
from sandbox_sdk.server.orchestrator.sandbox.agent_runtime import AgentRuntime
from sandbox_sdk.server.orchestrator.sandbox.bubblewrap import RootMount, system_mounts
from sandbox_sdk.server.orchestrator.sandbox.commands import ENVIRONMENT_ID_VARIABLE, agent_launch
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    EnvironmentSpec,
    Limits,
    NetworkPolicy,
)
from sandbox_sdk.server.orchestrator.sandbox.gvisor import (
    AGENT_SOURCE_MOUNT,
    Gvisor,
    GvisorBundle,
    GvisorUsers,
    agent_runtime_mounts,
    agent_source_mount,
    oci_spec,
    system_directory_mounts,
    workspace_mounts,
)
from sandbox_sdk.server.orchestrator.sandbox.host_env import host_process_env
from sandbox_sdk.server.orchestrator.sandbox.isolation import Isolation
from sandbox_sdk.server.orchestrator.sandbox.rlimits import ProcessLimits
from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings
from sandbox_sdk.server.orchestrator.sandbox.workspace import WorkspaceLayout

# What gVisor itself holds on the host, counted in the environment's cgroup on top of
# its commands' limits: measured idle at 69 tasks (its kernel's threads, its file
# proxy) and 30 MiB. Each command process adds a ptrace stub process with up to a few
# threads on the host, so the host's pids limit grows with the environment's. Inside,
# gVisor's own kernel holds the commands to max_pids (see .gvisor).
GVISOR_TASKS = 128
GVISOR_TASKS_PER_PROCESS = 4
GVISOR_MEMORY_BYTES = 96 * 1024 * 1024


@dataclass(frozen=True)
class LaunchPlan:
    """One environment's sandbox to start.

    ``root`` is a template root to use as ``/`` (None: the host's system
    directories, read-only); ``root_as_owner`` makes the sandbox uid its owner,
    uid 0 inside (template builds, bubblewrap only).
    """

    environment_id: str
    spec: EnvironmentSpec
    layout: WorkspaceLayout
    limits: ProcessLimits
    root: Path | None = None
    root_as_owner: bool = False


@dataclass(frozen=True)
class PreparedLaunch:
    """How to start a sandbox's agent (which owns the fds it passes on).

    ``egress_pid_read`` is the pipe on which bubblewrap reports the sandbox's
    pid, to attach its egress network to (None: no egress network); the
    caller owns it. ``finish`` is what must still be done once the
    environment's file system is ready, before the agent may run.
    """

    launch: AgentLaunch
    egress_pid_read: int | None = None
    finish: Callable[[], Awaitable[None]] | None = None


class SandboxRuntime(Protocol):
    """Prepares environments' sandboxes of one kind (see the module docstring)."""

    @property
    def kind(self) -> IsolationRuntime:
        """Which runtime this is."""
        ...

    def level(self, isolation: Isolation) -> str:
        """The isolation level of its environments, runtime first: ``bubblewrap+seccomp+...``."""
        ...

    async def prepare(
        self, plan: LaunchPlan, isolation: Isolation, resolv_conf: Path | None
    ) -> PreparedLaunch:
        """Readies the sandbox of ``plan`` with the layers of ``isolation`` (whose sandbox
        uid a template build changes); ``resolv_conf`` set: it gets an egress network."""
        ...

    def host_limits(self, limits: Limits) -> Limits:
        """The cgroup limits the host enforces on an environment with ``limits``: what its
        commands may use, plus what the runtime itself needs."""
        ...

    def cannot_run(self, spec: EnvironmentSpec) -> str | None:
        """Why this runtime cannot run an environment of ``spec`` here, and what to do
        instead (None: it can)."""
        ...


def _shared_layers(isolation: Isolation) -> list[str]:
    layers = []
    if isolation.cgroups is not None:
        layers.append(f"cgroup-v{isolation.cgroups.version}")
    layers.append("rlimits")
    if isolation.loop_quota:
        layers.append("disk-quota")
    return layers


@dataclass(frozen=True)
class BubblewrapRuntime:
    """Linux namespaces (bubblewrap), a seccomp filter, cgroups and rlimits on the host kernel."""

    settings: SandboxSettings
    system_mounts: Sequence[str]
    agent_runtime: AgentRuntime | None
    kind: IsolationRuntime = IsolationRuntime.BUBBLEWRAP

    def level(self, isolation: Isolation) -> str:
        return isolation.level

    def host_limits(self, limits: Limits) -> Limits:
        return limits

    def cannot_run(self, spec: EnvironmentSpec) -> str | None:
        return None

    async def prepare(
        self, plan: LaunchPlan, isolation: Isolation, resolv_conf: Path | None
    ) -> PreparedLaunch:
        seccomp = isolation.seccomp if isolation.bwrap_path else None
        owned: list[int] = []
        try:
            seccomp_fd = seccomp.to_fd() if seccomp is not None else None
            if seccomp_fd is not None:
                owned.append(seccomp_fd)
            info_read, info_write = os.pipe() if resolv_conf is not None else (None, None)
            owned += [fd for fd in (info_read, info_write) if fd is not None]
            launch = agent_launch(
                isolation,
                environment_id=plan.environment_id,
                spec=plan.spec,
                layout=plan.layout,
                system_mounts=self.system_mounts,
                limits=plan.limits,
                python=self.settings.agent_python,
                seccomp_fd=seccomp_fd,
                info_fd=info_write,
                resolv_conf=resolv_conf,
                root=self._root_mount(plan),
                runtime=self.agent_runtime,
            )
        except BaseException:
            for fd in owned:
                os.close(fd)
            raise
        return PreparedLaunch(launch, info_read)

    def _root_mount(self, plan: LaunchPlan) -> RootMount | None:
        if plan.root is None:
            return None
        if self.agent_runtime is None:
            raise ValueError("template roots need the host interpreter's runtime")
        return RootMount(
            plan.root, tuple(self.agent_runtime.bwrap_binds()), as_root=plan.root_as_owner
        )


@dataclass(frozen=True)
class GvisorRuntime:
    """gVisor's user-space kernel (``runsc``) inside the environment's cgroups, its agent
    and its commands two different users (see :mod:`.gvisor`)."""

    gvisor: Gvisor
    settings: SandboxSettings
    agent_runtime: AgentRuntime | None
    kind: IsolationRuntime = IsolationRuntime.GVISOR

    def level(self, isolation: Isolation) -> str:
        return "+".join([self.gvisor.layer, *_shared_layers(isolation)])

    def cannot_run(self, spec: EnvironmentSpec) -> str | None:
        if spec.network is not NetworkPolicy.NONE:
            return (
                f"network {spec.network.value} is not available under gvisor on this "
                "orchestrator (its environments get gVisor's own network stack with "
                "loopback only): create the environment with runtime='bubblewrap' for "
                "a network, or with network NONE under gvisor"
            )
        return None

    def host_limits(self, limits: Limits) -> Limits:
        return replace(
            limits,
            memory_bytes=limits.memory_bytes + GVISOR_MEMORY_BYTES,
            max_pids=GVISOR_TASKS + GVISOR_TASKS_PER_PROCESS * limits.max_pids,
        )

    async def prepare(
        self, plan: LaunchPlan, isolation: Isolation, resolv_conf: Path | None
    ) -> PreparedLaunch:
        if resolv_conf is not None:
            raise ValueError(self.cannot_run(plan.spec))
        if plan.root_as_owner:
            raise ValueError("template builds run under bubblewrap")
        bundle = GvisorBundle.of(plan.layout)
        mounts, symlinks = system_directory_mounts(self.settings.read_only_paths)
        if plan.root is not None:
            if self.agent_runtime is None:
                raise ValueError("template roots need the host interpreter's runtime")
            mounts, symlinks = agent_runtime_mounts(self.agent_runtime), {}
        mounts += workspace_mounts(plan.layout.files_dir, plan.layout.tmp_dir)
        mounts.append(agent_source_mount(bundle))
        users = self._users(isolation)
        spec = oci_spec(
            argv=self._agent_argv(plan.root is not None, users),
            env=host_process_env(**{ENVIRONMENT_ID_VARIABLE: plan.environment_id}),
            limits=plan.limits,
            max_processes=plan.spec.limits.max_pids,
            mounts=mounts,
            root=plan.root,
            users=users,
        )

        async def write_bundle() -> None:
            code = agent_code.compiled(self.settings.agent_python).file_bytes()
            await asyncio.to_thread(bundle.write, spec, symlinks, agent_source(), code)

        # As root (see .gvisor): runsc drops what it does not need itself.
        argv = self.gvisor.command(bundle, plan.environment_id)
        return PreparedLaunch(
            AgentLaunch(
                argv=argv,
                limits=["-"] * 4,  # the rlimits apply inside gVisor's kernel (the spec's)
                env=host_process_env(**{ENVIRONMENT_ID_VARIABLE: plan.environment_id}),
                fds_from_agent=False,
                socket_on_stdin=True,
                append_agent_arguments=False,
            ),
            finish=write_bundle,
        )

    def _users(self, isolation: Isolation) -> GvisorUsers:
        if isolation.sandbox_user is None:
            raise ValueError("gVisor environments need the orchestrator to be root")
        agent = (self.settings.gvisor_agent_uid, self.settings.gvisor_agent_uid)
        return GvisorUsers(agent=agent, command=isolation.sandbox_user)

    def _agent_argv(self, in_template: bool, users: GvisorUsers) -> list[str]:
        agent_args = agent_code.directory_interpreter_arguments(str(AGENT_SOURCE_MOUNT))
        agent_args += ["sandbox-agent", users.agent_argument()]
        agent_args += agent_arguments(fds_from_agent=False, fd=0)
        if in_template and self.agent_runtime is not None:
            return self.agent_runtime.command(*agent_args)
        return [self.settings.agent_python, *agent_args]


def egress_wanted(spec: EnvironmentSpec, isolation: Isolation) -> bool:
    """Whether ``spec``'s sandbox gets an egress network (it needs network namespaces)."""
    return spec.network is NetworkPolicy.EGRESS and isolation.bwrap_path is not None


def installed_runtimes(
    isolation: Isolation, settings: SandboxSettings, agent_runtime: AgentRuntime | None
) -> dict[IsolationRuntime, SandboxRuntime]:
    """The runtimes this orchestrator can start environments under."""
    runtimes: dict[IsolationRuntime, SandboxRuntime] = {
        IsolationRuntime.BUBBLEWRAP: BubblewrapRuntime(
            settings, system_mounts(settings.read_only_paths), agent_runtime
        )
    }
    if isolation.gvisor is not None:
        runtimes[IsolationRuntime.GVISOR] = GvisorRuntime(isolation.gvisor, settings, agent_runtime)
    return runtimes
