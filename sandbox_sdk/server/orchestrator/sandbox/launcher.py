"""Starting an environment's sandbox: its agent, under its runtime, and its network.

The runtime (:mod:`.runtimes`) prepares the sandbox and says how to start
the agent; the egress network is attached before the agent is handed out, so
no command ever runs before its firewall.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox_sdk.models.environment import IsolationRuntime
from sandbox_sdk.server.orchestrator.sandbox.agent_client import AgentClient, WaitingGate
from sandbox_sdk.server.orchestrator.sandbox.agent_runtime import AgentRuntime
from sandbox_sdk.server.orchestrator.sandbox.cgroups import EnvironmentCgroup
from sandbox_sdk.server.orchestrator.sandbox.environment_record import EnvironmentSpec
from sandbox_sdk.server.orchestrator.sandbox.isolation import Isolation
from sandbox_sdk.server.orchestrator.sandbox.network import (
    RESOLV_CONF,
    EgressNetwork,
    EgressRules,
    host_addresses,
    parse_cidrs,
)
from sandbox_sdk.server.orchestrator.sandbox.runtimes import (
    BubblewrapRuntime,
    LaunchPlan,
    SandboxRuntime,
    egress_wanted,
)
from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings

RESOLV_CONF_NAME = "egress-resolv.conf"


@dataclass(frozen=True)
class Sandbox:
    """A started environment sandbox: its agent and, for egress, its network."""

    agent: AgentClient
    network: EgressNetwork | None


@dataclass(frozen=True)
class SandboxLauncher:
    """Starts environments' sandboxes on this orchestrator, each under its runtime.

    ``runtimes`` are the isolation runtimes installed here (bubblewrap's is
    always there, whatever layers it has). ``resolv_conf`` is the resolver
    file egress sandboxes see (made by :func:`write_resolv_conf`), readable by
    the sandbox uid.
    """

    isolation: Isolation
    settings: SandboxSettings
    runtimes: Mapping[IsolationRuntime, SandboxRuntime]
    resolv_conf: Path

    @property
    def agent_runtime(self) -> AgentRuntime | None:
        """The host interpreter as template roots see it (None: they are refused)."""
        bubblewrap = self.runtimes[IsolationRuntime.BUBBLEWRAP]
        return bubblewrap.agent_runtime if isinstance(bubblewrap, BubblewrapRuntime) else None

    def runtime(self, kind: IsolationRuntime) -> SandboxRuntime:
        """The runtime of ``kind``; raises LookupError if it is not installed here."""
        try:
            return self.runtimes[kind]
        except KeyError:
            raise LookupError(f"the {kind.value.lower()} runtime is not installed here") from None

    def level(self, spec: EnvironmentSpec) -> str:
        """The isolation level of an environment of ``spec``, and what its root is."""
        level = self.runtime(spec.runtime).level(self.isolation)
        if spec.template is None:
            return level
        return f"{level}+root=template:{spec.template[:12]}+overlay"

    def egress_rules(self, spec: EnvironmentSpec) -> EgressRules:
        """The operator's deny list and this host's addresses, then the environment's own."""
        denied = parse_cidrs(self.settings.egress_denied_cidrs) + host_addresses()
        return EgressRules(
            allowed=parse_cidrs(spec.egress_allow_cidrs),
            denied=denied + parse_cidrs(spec.egress_deny_cidrs),
        )

    async def start(
        self,
        plan: LaunchPlan,
        *,
        cgroup: EnvironmentCgroup | None,
        prepare: Coroutine[Any, Any, None] | None,
        on_violation: Callable[[str], None],
        gate: WaitingGate | None = None,
    ) -> Sandbox:
        """Starts the agent (``prepare`` is awaited meanwhile), then its network; ``gate``
        is a gate started ahead, already in ``cgroup``, to take the launch if it can (see
        :mod:`.gate_pool`)."""
        egress = egress_wanted(plan.spec, self.isolation)
        try:
            prepared = await self.runtime(plan.spec.runtime).prepare(
                plan, self.isolation, self.resolv_conf if egress else None
            )
        except BaseException:
            if prepare is not None:
                prepare.close()
            raise
        info_read = prepared.egress_pid_read
        if prepared.finish is not None:
            prepare = _then(prepare, prepared.finish)
        try:
            agent = await AgentClient.start(
                prepared.launch,
                contain=cgroup.attach if cgroup is not None else _no_cgroups,
                prepare=prepare,
                on_violation=on_violation,
                gate=gate,
            )
        except BaseException:
            if info_read is not None:
                os.close(info_read)
            raise
        if info_read is None:
            return Sandbox(agent, None)
        return Sandbox(agent, await self._connect(agent, info_read, plan.spec, cgroup))

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


def _no_cgroups(pid: int) -> None:
    """Nothing to do: there are no cgroups to put the process in."""


async def _then(
    first: Coroutine[Any, Any, None] | None, second: Callable[[], Awaitable[None]]
) -> None:
    if first is not None:
        await first
    await second()


def write_resolv_conf(directory: Path) -> Path:
    """The resolver file of egress sandboxes (slirp4netns's DNS forwarder), world-readable."""
    path = directory / RESOLV_CONF_NAME
    path.write_text(RESOLV_CONF, encoding="utf-8")
    path.chmod(0o644)
    return path
