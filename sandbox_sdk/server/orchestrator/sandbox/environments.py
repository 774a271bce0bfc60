"""The orchestrator's environments: their records and, for live ones, their runtimes.

Every part of the sandbox layer reaches environments through one
:class:`LiveEnvironments`: it looks a tenant's environment up (NOT_FOUND for
another tenant's), insists that it is RUNNING, saves changes to its record
(keeping them in memory while the disk is full), and tells whoever listens
when one ends.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from sandbox_sdk.server import ids
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.sandbox.create_queue import CreateQueue
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Environment,
    EnvironmentState,
)
from sandbox_sdk.server.orchestrator.sandbox.isolation import Isolation
from sandbox_sdk.server.orchestrator.sandbox.metrics import SandboxMetrics
from sandbox_sdk.server.orchestrator.sandbox.runtime import Runtime, keep_in_background
from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings
from sandbox_sdk.server.orchestrator.sandbox.statuses import environment_not_found, not_running
from sandbox_sdk.server.orchestrator.sandbox.store import EnvironmentStore
from sandbox_sdk.server.orchestrator.sandbox.workspace import WorkspaceLayout

log = logging.getLogger(__name__)


class TemplateRoots(Protocol):
    """The templates' root file systems environments start from (the template cache)."""

    def acquire(self, digest: str, environment_id: str) -> Path:
        """The template's root file system, marked in use by the environment; raises
        FAILED_PRECONDITION if there is no such template."""

    def release(self, digest: str, environment_id: str) -> None:
        """The environment no longer uses the template (idempotent)."""


class CachedEnvironmentStore(EnvironmentStore):
    """The store, with the records of environments not yet TERMINATED kept in memory.

    Every write of a record goes through this object (``insert``, ``save``, ``update``,
    ``record_activity``), so the memory copy changes with the row, after the row; a record
    that reaches TERMINATED leaves memory and is read from the database again. A read of a
    live environment (GetEnvironment, every command and file call) then costs no query
    and no parse of the JSON spec.
    """

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._live: dict[str, Environment] = {}

    def _remember(self, environment: Environment) -> None:
        if environment.state is EnvironmentState.TERMINATED:
            self._live.pop(environment.id, None)
        else:
            self._live[environment.id] = environment

    def insert(self, environment: Environment) -> None:
        super().insert(environment)
        self._remember(environment)

    def get(self, environment_id: str) -> Environment | None:
        cached = self._live.get(environment_id)
        if cached is not None:
            return cached
        environment = super().get(environment_id)
        if environment is not None:
            self._remember(environment)
        return environment

    def save(self, environment: Environment) -> None:
        try:
            super().save(environment)
        except BaseException:
            # The row may or may not have changed: the next read goes to the database.
            self._live.pop(environment.id, None)
            raise
        self._remember(environment)

    def update(self, environment: Environment, **changes: Any) -> Environment:
        updated = super().update(environment, **changes)
        self._remember(updated)
        return updated

    def record_activity(self, environment_id: str, when: float) -> None:
        super().record_activity(environment_id, when)
        cached = self._live.get(environment_id)
        if cached is not None and cached.last_activity_time < when:
            self._live[environment_id] = replace(cached, last_activity_time=when)


class LiveEnvironments:
    """The records, the runtimes of live environments, and the queue of waiting creates.

    ``isolation`` is known once the manager has started (tests may force it).
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
    ) -> None:
        if not ids.ORCHESTRATOR_ID_PATTERN.match(orchestrator_id):
            raise ValueError(f"orchestrator id {orchestrator_id!r} must match [a-z0-9]{{1,16}}")
        self.settings = settings
        self.orchestrator_id = orchestrator_id
        self.workspace_root = Path(workspace_root)
        self.store: EnvironmentStore = CachedEnvironmentStore(db)
        self.metrics = SandboxMetrics(registry)
        self.runtimes: dict[str, Runtime] = {}
        self.queue = CreateQueue(settings.max_queued_environments, settings.max_queued_file_bytes)
        self.background: set[asyncio.Future[Environment]] = set()
        self._isolation = isolation
        self._unsaved: dict[str, Environment] = {}
        self._callbacks: list[Callable[[str], None]] = []
        self.templates: TemplateRoots | None = None

    # --- the host ----------------------------------------------------------------------

    @property
    def isolation(self) -> Isolation:
        """The isolation layers in force; known once started."""
        if self._isolation is None:
            raise RuntimeError("SandboxManager.start() has not run yet")
        return self._isolation

    @isolation.setter
    def isolation(self, isolation: Isolation) -> None:
        self._isolation = isolation

    @property
    def isolation_known(self) -> bool:
        """Whether the isolation layers are known (detected, or forced by a test)."""
        return self._isolation is not None

    def layout(self, environment_id: str) -> WorkspaceLayout:
        """Where the environment's workspace lives on the host."""
        mount_root = self.settings.mount_root if self.isolation.sandbox_user else None
        return WorkspaceLayout.for_environment(self.workspace_root, mount_root, environment_id)

    # --- records -----------------------------------------------------------------------

    def record(self, environment_id: str) -> Environment | None:
        """The environment's record, with changes not saved yet."""
        return self._unsaved.get(environment_id) or self.store.get(environment_id)

    def save(self, environment: Environment, **changes: Any) -> Environment:
        """Applies ``changes`` and saves them; on a full disk the record waits in memory
        (the reaper saves it later) so that ending an environment, which frees space,
        never fails for want of space."""
        updated = replace(environment, **changes)
        try:
            self.store.save(updated)
        except sqlite3.Error as error:
            log.warning("could not save environment %s yet: %s", environment.id, error)
            self._unsaved[environment.id] = updated
        else:
            self._unsaved.pop(environment.id, None)
        return updated

    def save_pending(self) -> None:
        """Retries saving the records a full disk kept in memory."""
        for environment in list(self._unsaved.values()):
            self.save(environment)

    # --- look-ups ----------------------------------------------------------------------

    def get(self, tenant: str, environment_id: str) -> Environment:
        """The tenant's environment; NOT_FOUND for unknown ids and other tenants' ones."""
        environment = self.record(environment_id)
        if environment is None or environment.tenant != tenant:
            raise environment_not_found(environment_id)
        return self.with_activity(environment)

    def running(self, tenant: str, environment_id: str) -> tuple[Environment, Runtime]:
        """The tenant's RUNNING environment and its runtime; NOT_FOUND or FAILED_PRECONDITION."""
        return self.running_environment(self.get(tenant, environment_id))

    def running_by_id(self, environment_id: str) -> tuple[Environment, Runtime]:
        """Like :meth:`running`, for callers inside the orchestrator (any tenant's)."""
        environment = self.store.get(environment_id)
        if environment is None:
            raise environment_not_found(environment_id)
        return self.running_environment(environment)

    def running_environment(self, environment: Environment) -> tuple[Environment, Runtime]:
        """The environment and its runtime; FAILED_PRECONDITION unless it is RUNNING."""
        runtime = self.runtimes.get(environment.id)
        if not environment.running or runtime is None or runtime.workspace is None:
            raise not_running(environment)
        return environment, runtime

    def live(self, environment_id: str, tenant: str | None = None) -> Runtime | None:
        """The runtime of a RUNNING environment (of ``tenant``, if given), without a database
        read; None if it is not one (the caller then finds out why, from the record)."""
        runtime = self.runtimes.get(environment_id)
        if runtime is None or (tenant is not None and runtime.tenant != tenant):
            return None
        # ready is set once the record says RUNNING; releasing once it no longer does.
        if not runtime.ready.is_set() or runtime.releasing or runtime.workspace is None:
            return None
        return runtime

    def with_activity(self, environment: Environment) -> Environment:
        """The record with the activity not saved yet (and its queue position)."""
        environment = self.with_queue_position(environment)
        runtime = self.runtimes.get(environment.id)
        if runtime is None or runtime.last_activity <= environment.last_activity_time:
            return environment
        return replace(environment, last_activity_time=runtime.last_activity)

    def with_queue_position(self, environment: Environment) -> Environment:
        """The record with its place in the queue of waiting creates, if it waits."""
        if environment.state is not EnvironmentState.QUEUED:
            return environment
        return replace(environment, queue_position=self.queue.position(environment.id))

    # --- what is held ------------------------------------------------------------------

    def allocation(self) -> tuple[int, float, int]:
        """How many environments hold room, and the CPU cores and memory promised to them."""
        runtimes = self.runtimes.values()
        return (
            len(runtimes),
            sum(r.spec.limits.cpu_cores for r in runtimes),
            sum(r.spec.limits.memory_bytes for r in runtimes),
        )

    def publish_allocation(self) -> None:
        """Sets the allocation gauges to what is held now."""
        self.metrics.set_allocation(*self.allocation())

    # --- endings and background work ---------------------------------------------------

    def on_terminated(self, callback: Callable[[str], None]) -> None:
        """Calls ``callback(environment_id)`` when an environment ends for any reason."""
        self._callbacks.append(callback)

    def notify_terminated(self, environment_id: str) -> None:
        """Tells every ``on_terminated`` callback; one that fails does not stop the others."""
        for callback in self._callbacks:
            try:
                callback(environment_id)
            except Exception:
                log.exception("on_terminated callback failed for %s", environment_id)

    def run_in_background(self, task: asyncio.Future[Environment]) -> None:
        """Keeps ``task`` until it ends (the manager's stop waits for it); logs its failure."""
        keep_in_background(self.background, task)
