"""Starting an environment's sandbox: its agent, under the seccomp filter, and its network.

The fds a start needs (bubblewrap's seccomp program, and for egress the pipe
on which bubblewrap reports the sandbox's pid) are made here and handed to
the launch, which closes them; the egress network is attached before the
agent is handed out, so no command ever runs before its firewall.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox_sdk.server.orchestrator.sandbox.agent_client import AgentClient
from sandbox_sdk.server.orchestrator.sandbox.agent_runtime import AgentRuntime
from sandbox_sdk.server.orchestrator.sandbox.bubblewrap import RootMount
from sandbox_sdk.server.orchestrator.sandbox.cgroups import EnvironmentCgroup
from sandbox_sdk.server.orchestrator.sandbox.commands import agent_launch
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    EnvironmentSpec,
    NetworkPolicy,
)
from sandbox_sdk.server.orchestrator.sandbox.isolation import Isolation
from sandbox_sdk.server.orchestrator.sandbox.network import (
    RESOLV_CONF,
    EgressNetwork,
    EgressRules,
    host_addresses,
    parse_cidrs,
)
from sandbox_sdk.server.orchestrator.sandbox.rlimits import ProcessLimits
from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings
from sandbox_sdk.server.orchestrator.sandbox.workspace import WorkspaceLayout

RESOLV_CONF_NAME = "egress-resolv.conf"


@dataclass(frozen=True)
class Sandbox:
    """A started environment sandbox: its agent and, for egress, its network."""

    agent: AgentClient
    network: EgressNetwork | None


@dataclass(frozen=True)
class SandboxLauncher:
    """Starts environments' sandboxes on this orchestrator.

    ``resolv_conf`` is the resolver file egress sandboxes see (made by
    :func:`write_resolv_conf`), readable by the sandbox uid. ``agent_runtime``
    runs the agent in template roots (None: they are refused).
    """

    isolation: Isolation
    settings: SandboxSettings
    system_mounts: Sequence[str]
    resolv_conf: Path
    agent_runtime: AgentRuntime | None = None

    def egress_rules(self, spec: EnvironmentSpec) -> EgressRules:
        """The operator's deny list and this host's addresses, then the environment's own."""
        denied = parse_cidrs(self.settings.egress_denied_cidrs) + host_addresses()
        return EgressRules(
            allowed=parse_cidrs(spec.egress_allow_cidrs),
            denied=denied + parse_cidrs(spec.egress_deny_cidrs),
        )

    async def start(
        self,
        *,
        environment_id: str,
        spec: EnvironmentSpec,
        layout: WorkspaceLayout,
        limits: ProcessLimits,
        cgroup: EnvironmentCgroup | None,
        prepare: Coroutine[Any, Any, None] | None,
        on_violation: Callable[[str], None],
        root: Path | None = None,
        root_as_owner: bool = False,
    ) -> Sandbox:
        """Starts the agent (``prepare`` is awaited meanwhile), then its network.

        ``root`` is a template root bound at ``/`` (``root_as_owner``: the
        sandbox uid owns it and is uid 0 inside, for template builds).
        """
        egress = spec.network is NetworkPolicy.EGRESS and self.isolation.bwrap_path is not None
        seccomp = self.isolation.seccomp if self.isolation.bwrap_path else None
        owned: list[int] = []
        try:
            seccomp_fd = seccomp.to_fd() if seccomp is not None else None
            if seccomp_fd is not None:
                owned.append(seccomp_fd)
            info_read, info_write = os.pipe() if egress else (None, None)
            owned += [fd for fd in (info_read, info_write) if fd is not None]
            mount = self._root_mount(root, root_as_owner)
            launch = agent_launch(
                self.isolation,
                environment_id=environment_id,
                spec=spec,
                layout=layout,
                system_mounts=self.system_mounts,
                limits=limits,
                python=self.settings.agent_python,
                seccomp_fd=seccomp_fd,
                info_fd=info_write,
                resolv_conf=self.resolv_conf if egress else None,
                root=mount,
                runtime=self.agent_runtime,
            )
        except BaseException:
            for fd in owned:
                os.close(fd)
            if prepare is not None:
                prepare.close()
            raise
        try:
            agent = await AgentClient.start(
                launch,
                contain=cgroup.attach if cgroup is not None else lambda _: None,
                prepare=prepare,
                on_violation=on_violation,
            )
        except BaseException:
            if info_read is not None:
                os.close(info_read)
            raise
        if info_read is None:
            return Sandbox(agent, None)
        return Sandbox(agent, await self._connect(agent, info_read, spec, cgroup))

    def _root_mount(self, root: Path | None, as_owner: bool) -> RootMount | None:
        if root is None:
            return None
        if self.agent_runtime is None:
            raise ValueError("template roots need the host interpreter's runtime")
        return RootMount(root, tuple(self.agent_runtime.bwrap_binds()), as_root=as_owner)

    async def _connect(
        self,
        agent: AgentClient,
        info_read: int,
        spec: EnvironmentSpec,
        cgroup: EnvironmentCgroup | None,
    ) -> EgressNetwork:
        try:
            network = await EgressNetwork.attach(
                info_read, self.egress_rules(spec), self.settings.egress_mtu
            )
        except BaseException:
            await agent.close()
            raise
        if cgroup is not None:  # its work is the environment's, and counts against it
            with contextlib.suppress(OSError):
                cgroup.attach(network.pid)
        return network


def write_resolv_conf(directory: Path) -> Path:
    """The resolver file of egress sandboxes (slirp4netns's DNS forwarder), world-readable."""
    path = directory / RESOLV_CONF_NAME
    path.write_text(RESOLV_CONF, encoding="utf-8")
    path.chmod(0o644)
    return path
