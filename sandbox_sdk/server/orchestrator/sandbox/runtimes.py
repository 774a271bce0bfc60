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
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sandbox_sdk.models.environment import IsolationRuntime
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
    NetworkPolicy,
)
from sandbox_sdk.server.orchestrator.sandbox.gvisor import (
    AGENT_FILE_NAME,
    AGENT_SOURCE_MOUNT,
    Gvisor,
    GvisorBundle,
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
    """gVisor's user-space kernel (``runsc``, rootless) inside the environment's cgroups."""

    gvisor: Gvisor
    settings: SandboxSettings
    agent_runtime: AgentRuntime | None
    kind: IsolationRuntime = IsolationRuntime.GVISOR

    def level(self, isolation: Isolation) -> str:
        return "+".join([self.gvisor.layer, *_shared_layers(isolation)])

    async def prepare(
        self, plan: LaunchPlan, isolation: Isolation, resolv_conf: Path | None
    ) -> PreparedLaunch:
        if resolv_conf is not None:
            raise ValueError("gVisor environments have no egress network on this orchestrator")
        if plan.root_as_owner:
            raise ValueError("template builds run under bubblewrap")
        bundle = GvisorBundle.in_environment(plan.layout.mount_point)
        mounts, symlinks = system_directory_mounts(self.settings.read_only_paths)
        if plan.root is not None:
            if self.agent_runtime is None:
                raise ValueError("template roots need the host interpreter's runtime")
            mounts, symlinks = agent_runtime_mounts(self.agent_runtime), {}
        mounts += workspace_mounts(plan.layout.files_dir, plan.layout.tmp_dir)
        mounts.append(agent_source_mount(bundle))
        spec = oci_spec(
            argv=self._agent_argv(plan.root is not None),
            env=host_process_env(**{ENVIRONMENT_ID_VARIABLE: plan.environment_id}),
            limits=plan.limits,
            mounts=mounts,
            root=plan.root,
        )
        owner = isolation.sandbox_user

        async def write_bundle() -> None:
            await asyncio.to_thread(bundle.write, spec, symlinks, agent_source(), owner)

        argv = isolation.drop_privileges() + self.gvisor.command(bundle, plan.environment_id)
        return PreparedLaunch(
            AgentLaunch(
                argv=argv,
                limits=["-"] * 4,
                env=host_process_env(**{ENVIRONMENT_ID_VARIABLE: plan.environment_id}),
                fds_from_agent=False,
                socket_on_stdin=True,
                append_agent_arguments=False,
            ),
            finish=write_bundle,
        )

    def _agent_argv(self, in_template: bool) -> list[str]:
        agent_file = str(AGENT_SOURCE_MOUNT / AGENT_FILE_NAME)
        agent_args = ["-I", "-S", agent_file, "sandbox-agent"]
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
