"""Bringing environments up, and the calls on their records: create, list, update, delete.

A create is admitted (see :mod:`.capacity`), holds its room at once and is
set up in the background: the set-up outlives a caller that goes away, so a
retry with the same ``request_id`` finds the environment RUNNING, never one
killed half-way. A set-up that fails ends the environment SETUP_FAILED and
frees its ``request_id``. Ending environments is :mod:`.termination`'s job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import PurePosixPath

import grpc

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.models.environment import IsolationRuntime
from sandbox_sdk.server import ids, page_tokens
from sandbox_sdk.server.orchestrator.sandbox.capacity import CapacityGate
from sandbox_sdk.server.orchestrator.sandbox.create_queue import QueuedCreate
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Environment,
    EnvironmentSpec,
    EnvironmentState,
    EnvironmentUpdate,
    FileWrite,
    ListQuery,
    NewEnvironment,
    TerminationReason,
)
from sandbox_sdk.server.orchestrator.sandbox.environments import LiveEnvironments
from sandbox_sdk.server.orchestrator.sandbox.execution import Execution
from sandbox_sdk.server.orchestrator.sandbox.gate_pool import GatePool, PooledGate
from sandbox_sdk.server.orchestrator.sandbox.gvisor import AGENT_SOURCE_MOUNT
from sandbox_sdk.server.orchestrator.sandbox.runtime import Runtime
from sandbox_sdk.server.orchestrator.sandbox.runtime_policy import resolve_runtime
from sandbox_sdk.server.orchestrator.sandbox.statuses import file_errors
from sandbox_sdk.server.orchestrator.sandbox.termination import Termination
from sandbox_sdk.server.orchestrator.sandbox.workspace import (
    TemplateLayer,
    Workspace,
    split_path,
)
from sandbox_sdk.server.orchestrator.sandbox.workspace_pool import WorkspacePool
from sandbox_sdk.server.request_ids import DuplicateRequestError
from sandbox_sdk.server.status import ServiceError

log = logging.getLogger(__name__)

_REFILL_DELAY_SECONDS = 0.02

# Where bubblewrap mounts /workspace, /tmp, /proc and /dev in a template root.
# Made in a template environment's private layer before it first runs: what bubblewrap
# and gVisor mount over its root (gVisor also /dev/shm and the agent's source).
SANDBOX_MOUNT_POINTS = (
    *(PurePosixPath(name) for name in ("workspace", "tmp", "proc", "dev", "dev/shm")),
    AGENT_SOURCE_MOUNT.relative_to("/"),
)


class Lifecycle:
    """Creates environments and answers the calls on their records; see the module docstring."""

    def __init__(
        self,
        environments: LiveEnvironments,
        capacity: CapacityGate,
        execution: Execution,
        termination: Termination,
    ) -> None:
        self._environments = environments
        self._capacity = capacity
        self._execution = execution
        self._termination = termination
        # File systems made ahead (see workspace_pool); set once started.
        self.pool: WorkspacePool | None = None
        # Agent start gates started ahead in cgroups of their own (see gate_pool).
        self.gates: GatePool | None = None

    # --- create ------------------------------------------------------------------------

    async def create_environment(self, tenant: str, new: NewEnvironment) -> Environment:
        """Creates an environment and returns it RUNNING (or QUEUED, see below).

        A repeated ``request_id`` of the tenant returns the first environment.
        Raises RESOURCE_EXHAUSTED (CAPACITY_EXHAUSTED) when there is no room for it
        (see :mod:`.admission`), unless ``new.queue_when_full`` asks to wait: then
        it is returned QUEUED and started as soon as room frees up.
        """
        environments = self._environments
        if new.request_id:
            existing = environments.store.find_by_request(tenant, new.request_id)
            if existing is not None:
                return await self._settled(existing)
        self._capacity.check_network(tenant, new.spec.network)
        new = self._with_resolved_runtime(tenant, new)
        refusals = self._capacity.refusals(tenant, new.spec)
        queued = bool(refusals) and new.queue_when_full and environments.queue.takes(new.files)
        if refusals and not queued:
            raise self._capacity.no_room(refusals, queue_full=new.queue_when_full)
        environment = self._new_record(tenant, new, queued=queued)
        try:
            environments.store.insert(environment)
        except DuplicateRequestError:
            existing = environments.store.find_by_request(tenant, new.request_id)
            if existing is None:
                raise
            return await self._settled(existing)
        if queued:
            position = environments.queue.add(QueuedCreate(environment, new.files))
            log.info("environment %s queued at %d: %s", environment.id, position, refusals)
            return replace(environment, queue_position=position)
        return await asyncio.shield(self._start_creating(environment, new.files))

    def _with_resolved_runtime(self, tenant: str, new: NewEnvironment) -> NewEnvironment:
        """``new`` with the runtime the operator's policy gives it (PERMISSION_DENIED or
        FAILED_PRECONDITION before anything is stored or started, see :mod:`.runtime_policy`)."""
        environments = self._environments
        runtime = resolve_runtime(
            new.spec.runtime,
            tenant,
            environments.settings,
            environments.isolation.installed_runtimes(),
        )
        refusal = self._execution.launcher.runtime(runtime).cannot_run(new.spec)
        if refusal is not None:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.NETWORK_UNAVAILABLE, refusal
            )
        return replace(new, spec=replace(new.spec, runtime=runtime))

    def _new_record(self, tenant: str, new: NewEnvironment, *, queued: bool) -> Environment:
        environments = self._environments
        now = time.time()
        return Environment(
            id=ids.new_id(ids.ENVIRONMENT, environments.orchestrator_id),
            tenant=tenant,
            spec=new.spec,
            state=EnvironmentState.QUEUED if queued else EnvironmentState.CREATING,
            termination_reason=TerminationReason.UNSPECIFIED,
            termination_message="",
            isolation=self._execution.launcher.level(new.spec),
            orchestrator_id=environments.orchestrator_id,
            create_time=now,
            expire_time=now + new.spec.ttl_seconds,
            last_activity_time=now,
            terminate_time=None,
            request_id=new.request_id,
        )

    def admit_queued(self) -> None:
        """Starts the waiting creates that fit now, oldest first."""
        for admitted in self._capacity.admit_waiting():
            self._start_creating(admitted.environment, admitted.files)

    def _start_creating(
        self, environment: Environment, files: Sequence[FileWrite]
    ) -> asyncio.Future[Environment]:
        """Holds the environment's room at once and sets it up in the background."""
        active = environment.last_activity_time
        runtime = Runtime(
            environment.tenant, environment.spec, environment.expire_time, active, active
        )
        self._environments.runtimes[environment.id] = runtime
        self._environments.publish_allocation()
        # The set-up outlives a caller that goes away (a deadline, a cut connection):
        # its retry with the same request_id then finds the environment RUNNING,
        # never one killed half-way, and no mount or loop device is left behind.
        setup = asyncio.ensure_future(self._bring_up(environment, runtime, files))
        self._environments.run_in_background(setup)
        return setup

    async def _bring_up(
        self, environment: Environment, runtime: Runtime, files: Sequence[FileWrite]
    ) -> Environment:
        """Sets the environment up and marks it RUNNING; on failure ends it SETUP_FAILED
        and frees its request_id, so that a retry starts afresh."""
        started = time.monotonic()
        try:
            await self._set_up(environment.id, runtime, files)
        except BaseException as error:
            self._refill_pools_soon()
            await asyncio.shield(self._fail_setup(environment, runtime, error))
            if isinstance(error, ServiceError | asyncio.CancelledError):
                raise
            log.exception("setting up environment %s failed", environment.id)
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                ErrorReason.INTERNAL,
                f"could not set up environment {environment.id} ({error}); try again",
            ) from error
        environment = self._environments.store.update(environment, state=EnvironmentState.RUNNING)
        runtime.ready.set()
        self._environments.metrics.create_seconds.observe(time.monotonic() - started)
        self._refill_pools_soon()
        return environment

    def _refill_pools_soon(self) -> None:
        """Refills the pools a moment after the create that took from them is done: its
        answer goes out first, before their forks and CPU get in its way."""
        asyncio.get_running_loop().call_later(_REFILL_DELAY_SECONDS, self._refill_pool)

    def _refill_pool(self) -> None:
        """Makes up for a file system and a gate taken, once the create that took them is
        done (the machine's CPUs are then the next creates', not a background
        ``mkfs.ext4``'s)."""
        if self.pool is not None:
            self.pool.refill()
        if self.gates is not None:
            self.gates.refill()

    async def _settled(self, environment: Environment) -> Environment:
        runtime = self._environments.runtimes.get(environment.id)
        if environment.state is EnvironmentState.CREATING and runtime is not None:
            await runtime.ready.wait()
        stored = self._environments.store.get(environment.id)
        return self._environments.with_queue_position(stored or environment)

    async def _set_up(
        self, environment_id: str, runtime: Runtime, files: Sequence[FileWrite]
    ) -> None:
        environments = self._environments
        isolation = environments.isolation
        limits = runtime.spec.limits
        template = self._template_layer(environment_id, runtime.spec)
        gate = await self._pooled_gate(environment_id, runtime)
        try:
            if isolation.cgroups is not None and gate is None:
                runtime.cgroup = isolation.cgroups.environment(environment_id)
                # Written on a thread while the agent's gate starts and the workspace is
                # made; the gated process is attached only once the limits are in place.
                host = self._execution.launcher.runtime(runtime.spec.runtime).host_limits(limits)
                runtime.cgroup.create_soon(host.cpu_cores, host.memory_bytes, host.max_pids)

            async def make_workspace() -> None:
                # Taken here, so that a start that fails before never strands one.
                pool = self.pool
                ready = pool.take(limits.disk_bytes) if pool is not None else None
                runtime.workspace = await Workspace.create(
                    environments.layout(environment_id),
                    quota_bytes=limits.disk_bytes,
                    loop_quota=isolation.loop_quota,
                    owner=isolation.sandbox_user,
                    template=template,
                    ready=ready,
                )

            # The agent's process waits at its gate while the workspace is made.
            async with runtime.agent_lock:
                await self._execution.start_agent(
                    environment_id, runtime, prepare=make_workspace(), gate=gate
                )
        finally:
            if gate is not None and not gate.opened:  # the start failed before it got there
                await gate.discard()
        workspace = runtime.files()
        for index, file in enumerate(files):
            field_path = f"files[{index}].path"
            with file_errors(field_path, file.path, limits.disk_bytes, environments.workspace_root):
                await asyncio.to_thread(
                    workspace.write_file, split_path(file.path), file.content, file.mode
                )

    async def _pooled_gate(self, environment_id: str, runtime: Runtime) -> PooledGate | None:
        """A gate started ahead, its cgroups now the environment's and under its limits;
        None when the pool has none for it (the create then starts a gate as before)."""
        gates = self.gates
        driver = gates.driver if gates is not None else None
        if (
            gates is None
            or driver is None
            or runtime.spec.runtime is not IsolationRuntime.BUBBLEWRAP
        ):
            return None
        gate = gates.take()
        if gate is None:
            return None
        launcher_runtime = self._execution.launcher.runtime(runtime.spec.runtime)
        host = launcher_runtime.host_limits(runtime.spec.limits)
        try:
            runtime.cgroup = await asyncio.to_thread(
                gate.adopt, driver, environment_id, host.cpu_cores, host.memory_bytes, host.max_pids
            )
        except Exception as error:
            log.warning("a pooled start gate could not be adopted (%s); starting one", error)
            await gate.discard()  # before the environment's own cgroups are made
            return None
        except BaseException:
            gates.discard_later(gate)
            raise
        return gate

    def _template_layer(self, environment_id: str, spec: EnvironmentSpec) -> TemplateLayer | None:
        """The environment's template root, marked in use; None without a template."""
        if spec.template is None:
            return None
        templates = self._environments.templates
        runtime = self._execution.launcher.agent_runtime
        if templates is None or runtime is None or not self._environments.isolation.bwrap_path:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                ErrorReason.INVALID_ARGUMENT,
                "this orchestrator cannot start environments from templates (it needs "
                "bubblewrap and a template store); create it without a template",
            )
        rootfs = templates.acquire(spec.template, environment_id)
        points = [*runtime.mount_points(), *SANDBOX_MOUNT_POINTS]
        return TemplateLayer(rootfs, tuple(points))

    async def _fail_setup(
        self, environment: Environment, runtime: Runtime, error: BaseException
    ) -> None:
        environments = self._environments
        try:
            await self._termination.release(environment.id, runtime)
        finally:
            environments.runtimes.pop(environment.id, None)
            environments.store.update(
                environment,
                state=EnvironmentState.TERMINATED,
                termination_reason=TerminationReason.SETUP_FAILED,
                termination_message=f"setting up failed: {error}"[:1000],
                terminate_time=time.time(),
                request_id="",
            )
            runtime.ready.set()
            runtime.terminated.set()
            environments.publish_allocation()
            environments.metrics.environments_terminated.labels(
                TerminationReason.SETUP_FAILED.value
            ).inc()

    # --- the records -------------------------------------------------------------------

    def list_environments(self, tenant: str, query: ListQuery) -> tuple[list[Environment], str]:
        """One page of the tenant's environments, newest first, and the next page token."""
        scope = {
            "tenant": tenant,
            "labels": dict(query.label_selector),
            "terminated": query.show_terminated,
        }
        before = page_tokens.decode(query.page_token, "environments", scope, _sequence)
        environments, next_seq = self._environments.store.page(
            tenant,
            before_seq=before,
            limit=query.page_size,
            label_selector=query.label_selector,
            show_terminated=query.show_terminated,
        )
        token = "" if next_seq is None else page_tokens.encode("environments", scope, next_seq)
        return [self._environments.with_activity(e) for e in environments], token

    def update_environment(
        self, tenant: str, environment_id: str, update: EnvironmentUpdate
    ) -> Environment:
        """Changes labels, ttl (counted from creation) or idle timeout of a running environment."""
        environment, runtime = self._environments.running(tenant, environment_id)
        spec = environment.spec
        if update.labels is not None:
            spec = replace(spec, labels=dict(update.labels))
        if update.ttl_seconds is not None:
            spec = replace(spec, ttl_seconds=update.ttl_seconds)
        if update.idle_timeout_seconds is not None:
            spec = replace(spec, idle_timeout_seconds=update.idle_timeout_seconds)
        runtime.spec = spec
        runtime.expire_time = environment.create_time + spec.ttl_seconds
        return self._environments.store.update(
            environment, spec=spec, expire_time=runtime.expire_time
        )

    async def delete_environment(self, tenant: str, environment_id: str) -> Environment:
        """Kills every process, removes the workspace; returns the TERMINATED environment."""
        environment = self._environments.get(tenant, environment_id)
        return await self._termination.terminate(
            environment.id, TerminationReason.USER_DELETED, "deleted by DeleteEnvironment"
        )


def _sequence(position: object) -> int:
    """An environments cursor: the sequence number to continue before."""
    if isinstance(position, bool) or not isinstance(position, int):
        raise TypeError("an environments cursor is a sequence number")
    return position
