"""What only a live orchestrator holds for one environment: its runtime.

An environment's record lives in SQLite; its workspace mount, cgroup, agent,
network and running commands exist only in this process, in a
:class:`Runtime`, from the moment its create is admitted until it ends.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from sandbox_sdk.server.orchestrator.sandbox.agent_client import AgentClient
from sandbox_sdk.server.orchestrator.sandbox.cgroups import EnvironmentCgroup
from sandbox_sdk.server.orchestrator.sandbox.commands import RunningCommand
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Environment,
    EnvironmentSpec,
    Usage,
)
from sandbox_sdk.server.orchestrator.sandbox.monitor import UsageTracker
from sandbox_sdk.server.orchestrator.sandbox.network import EgressNetwork
from sandbox_sdk.server.orchestrator.sandbox.workspace import Workspace
from sandbox_sdk.server.status import ServiceError

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What only a live orchestrator holds for one environment."""

    tenant: str
    spec: EnvironmentSpec
    expire_time: float
    last_activity: float
    saved_activity: float
    workspace: Workspace | None = None
    cgroup: EnvironmentCgroup | None = None
    agent: AgentClient | None = None
    network: EgressNetwork | None = None
    agent_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    terminated: asyncio.Event = field(default_factory=asyncio.Event)
    execs: dict[int, RunningCommand] = field(default_factory=dict)
    usage: UsageTracker = field(default_factory=UsageTracker)
    exec_count: int = 0
    releasing: bool = False

    def files(self) -> Workspace:
        """The workspace, which every RUNNING environment has."""
        if self.workspace is None:
            raise RuntimeError("the environment's workspace is not set up")
        return self.workspace

    def live_pids(self) -> list[int]:
        """The root of the environment's process tree on the host: its agent's."""
        return [self.agent.pid] if self.agent is not None and not self.agent.closed else []

    def sample(self) -> Usage:
        """A fresh usage sample of the environment."""
        return self.usage.sample(self.cgroup, self.files(), self.live_pids())

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has ended in the environment's cgroup."""
        return self.cgroup.oom_kills() if self.cgroup is not None else 0


def keep_in_background(
    tasks: set[asyncio.Future[Environment]], task: asyncio.Future[Environment]
) -> None:
    """Holds ``task`` in ``tasks`` until it ends, then logs what it raised (and nobody read)."""

    def forget(done: asyncio.Future[Environment]) -> None:
        tasks.discard(done)
        error = None if done.cancelled() else done.exception()
        if error is not None and not isinstance(error, ServiceError):
            log.error("a background environment task failed: %r", error)

    tasks.add(task)
    task.add_done_callback(forget)
