"""The sandbox layer: environments' lifecycle, commands, files, usage and expiry.

State lives in SQLite; what only a live orchestrator can hold (workspace
mounts, cgroups, the agent, running commands) lives in per-environment
runtimes (:mod:`.runtime`). :class:`SandboxManager` is the one object the
rest of the orchestrator constructs; it composes the layer's parts, each in
its own module:

* :mod:`.environments` — records, runtimes, look-ups (shared by the others);
* :mod:`.lifecycle` — create, bring up, list, update, delete;
* :mod:`.termination` — ending environments, recovery after a crash;
* :mod:`.capacity` — admission, the queue of waiting creates, refusals;
* :mod:`.execution` — commands through each environment's agent, files, usage;
* :mod:`.activity` and :mod:`.background` — idle tracking, the reaper, the monitor;
* :mod:`.port` — what the experiment engine calls (``ports.SandboxPort``).

An environment's processes never outlive the orchestrator (bubblewrap's
``--die-with-parent``; the agent kills its commands and exits when its socket
closes), so a graceful :meth:`SandboxManager.stop` terminates every
environment, and :meth:`SandboxManager.start` after a crash marks the ones
left over ORCHESTRATOR_RESTARTED and removes what remains of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

from prometheus_client import CollectorRegistry

from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox import agent_code
from sandbox_sdk.server.orchestrator.sandbox.activity import Activity
from sandbox_sdk.server.orchestrator.sandbox.background import BackgroundTasks
from sandbox_sdk.server.orchestrator.sandbox.capacity import CapacityGate
from sandbox_sdk.server.orchestrator.sandbox.cgroups import CgroupV1Driver
from sandbox_sdk.server.orchestrator.sandbox.environment_files import EnvironmentFiles
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Capacity,
    Command,
    Environment,
    EnvironmentSpec,
    EnvironmentUpdate,
    ExecEvent,
    FileEntry,
    FileWrite,
    ListQuery,
    NewEnvironment,
    TerminationReason,
    Usage,
)
from sandbox_sdk.server.orchestrator.sandbox.environments import LiveEnvironments, TemplateRoots
from sandbox_sdk.server.orchestrator.sandbox.execution import Execution
from sandbox_sdk.server.orchestrator.sandbox.gate_pool import GatePool
from sandbox_sdk.server.orchestrator.sandbox.isolation import Isolation, detect_isolation
from sandbox_sdk.server.orchestrator.sandbox.launcher import SandboxLauncher
from sandbox_sdk.server.orchestrator.sandbox.lifecycle import Lifecycle
from sandbox_sdk.server.orchestrator.sandbox.port import SandboxPortAdapter
from sandbox_sdk.server.orchestrator.sandbox.port_forwarding import PortForwarding
from sandbox_sdk.server.orchestrator.sandbox.processes import EnvironmentProcesses
from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings
from sandbox_sdk.server.orchestrator.sandbox.termination import Termination
from sandbox_sdk.server.orchestrator.sandbox.workspace import WorkspaceLayout
from sandbox_sdk.server.orchestrator.sandbox.workspace_pool import WorkspacePool


class SandboxManager:
    """Creates, runs, monitors and expires environments; ``port`` serves the experiment engine.

    ``isolation`` overrides detection (tests force the fallbacks with it).
    """

    def __init__(
        self,
        db: Database,
        settings: SandboxSettings,
        orchestrator_id: str,
        workspace_root: Path,
        registry: CollectorRegistry | None = None,
        *,
        isolation: Isolation | None = None,
        templates: TemplateRoots | None = None,
    ) -> None:
        self._environments = LiveEnvironments(
            db, settings, orchestrator_id, workspace_root, registry, isolation=isolation
        )
        self._environments.templates = templates
        self.settings = settings
        self.orchestrator_id = orchestrator_id
        self.workspace_root = self._environments.workspace_root
        activity = Activity(self._environments)
        self._capacity = CapacityGate(self._environments)
        self._termination = Termination(
            self._environments, activity, on_room_freed=self._admit_queued
        )
        self._execution = Execution(self._environments, activity, self._termination)
        self._lifecycle = Lifecycle(
            self._environments, self._capacity, self._execution, self._termination
        )
        self._background = BackgroundTasks(
            self._environments, activity, self._lifecycle, self._termination
        )
        self.port = SandboxPortAdapter(self._environments, activity, self._execution)
        # Remove, rename, make directory, stat, and directories as tar streams.
        self.files = EnvironmentFiles(self._environments, activity)
        # ForwardPort: TCP connections to servers inside environments.
        self.forwarding = PortForwarding(self._environments, activity)
        # Background processes (StartProcess and the process RPCs).
        self.processes = EnvironmentProcesses(
            self._environments, activity, self._execution, settings, db
        )

    # --- start and stop ----------------------------------------------------------------

    @property
    def isolation(self) -> Isolation:
        """The isolation layers in force; known once started."""
        return self._environments.isolation

    @property
    def launcher(self) -> SandboxLauncher:
        """The launcher of sandboxes, once started (template builds use it too)."""
        return self._execution.launcher

    async def start(self) -> None:
        """Detects isolation, cleans up after a previous run, starts the reaper and monitor."""
        environments = self._environments
        self.workspace_root.mkdir(parents=True, exist_ok=True)
        if not environments.isolation_known:
            environments.isolation = await asyncio.to_thread(detect_isolation, self.settings)
        if self.isolation.sandbox_user is not None:
            self.settings.mount_root.mkdir(parents=True, exist_ok=True)
            self.settings.mount_root.chmod(0o711)
        self._execution.prepare_launcher()
        # Compiled once per process, before the first agent starts (see agent_code).
        await agent_code.prepare(self.settings.agent_python)
        self._capacity.find_egress_tools()
        await self._termination.recover()
        await self._termination.sweep_orphans()
        pool = WorkspacePool(
            self.workspace_root,
            self.settings.mount_root if self.isolation.sandbox_user is not None else None,
            self.orchestrator_id,
            self.settings.pooled_disk_sizes() if self.isolation.loop_quota else (),
            self.settings.workspace_pool_depth,
        )
        await pool.sweep()
        self._lifecycle.pool = pool
        pool.start()
        gates = GatePool(self._gate_cgroups(), self.orchestrator_id, self.settings.gate_pool_depth)
        await gates.sweep()
        self._lifecycle.gates = gates
        gates.start()
        self._background.start()

    def _gate_cgroups(self) -> CgroupV1Driver | None:
        """The cgroups pooled gates are made in: cgroup v1 with bubblewrap, else none."""
        cgroups = self.isolation.cgroups
        if not self.isolation.bwrap_path or not isinstance(cgroups, CgroupV1Driver):
            return None
        return cgroups

    async def stop(self) -> None:
        """Stops the background tasks and terminates every environment.

        Processes cannot outlive the orchestrator, so environments do not
        either: each ends ORCHESTRATOR_RESTARTED, saying the orchestrator shut down.
        """
        environments = self._environments
        await self._background.stop()
        live = [*environments.runtimes, *(q.environment.id for q in environments.queue)]
        await asyncio.gather(
            *(
                self._termination.terminate(
                    environment_id,
                    TerminationReason.ORCHESTRATOR_RESTARTED,
                    "the orchestrator shut down; environments do not outlive it",
                )
                for environment_id in live
            )
        )
        await asyncio.gather(*environments.background, return_exceptions=True)
        if self._lifecycle.pool is not None:
            await self._lifecycle.pool.close()
        if self._lifecycle.gates is not None:
            await self._lifecycle.gates.close()
        self.files.close()

    def _admit_queued(self) -> None:
        self._lifecycle.admit_queued()

    # --- environments (see lifecycle.Lifecycle) ----------------------------------------

    async def create_environment(self, tenant: str, new: NewEnvironment) -> Environment:
        """Creates an environment; RUNNING, or QUEUED if it asked to wait for room."""
        return await self._lifecycle.create_environment(tenant, new)

    def get_environment(self, tenant: str, environment_id: str) -> Environment:
        """The tenant's environment; NOT_FOUND for unknown ids and other tenants' ones."""
        return self._environments.get(tenant, environment_id)

    def environment_layout(self, tenant: str, environment_id: str) -> WorkspaceLayout:
        """Where the tenant's environment lives on the host (snapshots read its overlay
        layer and workspace); NOT_FOUND for unknown ids and other tenants' ones."""
        self._environments.get(tenant, environment_id)
        return self._environments.layout(environment_id)

    def list_environments(self, tenant: str, query: ListQuery) -> tuple[list[Environment], str]:
        """One page of the tenant's environments, newest first, and the next page token."""
        return self._lifecycle.list_environments(tenant, query)

    def update_environment(
        self, tenant: str, environment_id: str, update: EnvironmentUpdate
    ) -> Environment:
        """Changes labels, ttl (counted from creation) or idle timeout of a running environment."""
        return self._lifecycle.update_environment(tenant, environment_id, update)

    async def delete_environment(self, tenant: str, environment_id: str) -> Environment:
        """Kills every process, removes the workspace; returns the TERMINATED environment."""
        return await self._lifecycle.delete_environment(tenant, environment_id)

    def capacity(self) -> Capacity:
        """What is promised to running environments, and the totals."""
        return self._capacity.capacity()

    def live_environment_count(self, tenant: str) -> int:
        """The tenant's environments not yet TERMINATED, from the store's counter (O(1));
        blocks on the database, so callers on the event loop run it on a thread."""
        return self._environments.store.live_count(tenant)

    # --- commands, files and usage (see execution.Execution) ---------------------------

    def exec_command(
        self, tenant: str, environment_id: str, command: Command
    ) -> AsyncGenerator[ExecEvent, None]:
        """Runs a command; yields started, output chunks as produced, then exited."""
        return self._execution.exec_command(tenant, environment_id, command)

    async def write_file(
        self, tenant: str, environment_id: str, file: FileWrite, *, field_path: str = "file.path"
    ) -> FileEntry:
        """Writes a workspace file, creating its directories; durable once this returns."""
        return await self._execution.write_file(tenant, environment_id, file, field_path=field_path)

    async def read_workspace_file(
        self, tenant: str, environment_id: str, path: str
    ) -> tuple[FileEntry, bytes]:
        """A workspace file's metadata and bytes."""
        return await self._execution.read_workspace_file(tenant, environment_id, path)

    def list_files(
        self, tenant: str, environment_id: str, path: str, page_size: int, page_token: str
    ) -> tuple[list[FileEntry], str]:
        """One page of a workspace directory's entries, sorted by path, and the next token."""
        return self._execution.list_files(tenant, environment_id, path, page_size, page_token)

    def environment_usage(self, tenant: str, environment_id: str) -> tuple[Usage, EnvironmentSpec]:
        """A fresh usage sample and the spec (for its limits)."""
        return self._execution.environment_usage(tenant, environment_id)

    def stream_usage(
        self, tenant: str, environment_id: str, interval_seconds: float
    ) -> AsyncGenerator[Usage, None]:
        """A sample every ``interval_seconds`` until the environment terminates."""
        return self._execution.stream_usage(tenant, environment_id, interval_seconds)
