"""The sandbox layer: environments' lifecycle, commands, files, usage and expiry.

State lives in SQLite; what only a live orchestrator can hold (workspace
mounts, cgroups, the agent, running commands) lives in per-environment
runtimes. Each environment has one long-lived agent process inside its
sandbox (:mod:`.agent`) that starts its commands. If the agent dies (the OOM
killer may pick it), the next command starts a new one: the environment and
its files live on, its processes do not. An environment's processes never
outlive the orchestrator (bubblewrap's ``--die-with-parent``; the agent kills
its commands and exits when its socket closes), so a graceful
:meth:`SandboxManager.stop` terminates every environment, and
:meth:`SandboxManager.start` after a crash marks the ones left over
ORCHESTRATOR_RESTARTED and removes what remains of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server import ids
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.ports import CommandResult, UsageSample
from sandbox_sdk.server.orchestrator.sandbox import page_tokens, validation
from sandbox_sdk.server.orchestrator.sandbox.admission import Admission, Claim
from sandbox_sdk.server.orchestrator.sandbox.agent_client import AgentClient, AgentError
from sandbox_sdk.server.orchestrator.sandbox.bubblewrap import system_mounts
from sandbox_sdk.server.orchestrator.sandbox.cgroups import EnvironmentCgroup
from sandbox_sdk.server.orchestrator.sandbox.commands import (
    RunningCommand,
    exit_event,
    kill_marked_processes,
    spawn_request,
)
from sandbox_sdk.server.orchestrator.sandbox.create_queue import CreateQueue, QueuedCreate
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Capacity,
    Command,
    Environment,
    EnvironmentSpec,
    EnvironmentState,
    EnvironmentUpdate,
    ExecEvent,
    ExecExited,
    ExecOutput,
    FileEntry,
    FileWrite,
    ListQuery,
    NetworkPolicy,
    NewEnvironment,
    TerminationReason,
    Usage,
)
from sandbox_sdk.server.orchestrator.sandbox.isolation import Isolation, detect_isolation
from sandbox_sdk.server.orchestrator.sandbox.launcher import SandboxLauncher, write_resolv_conf
from sandbox_sdk.server.orchestrator.sandbox.metrics import SandboxMetrics
from sandbox_sdk.server.orchestrator.sandbox.monitor import UsageTracker
from sandbox_sdk.server.orchestrator.sandbox.network import (
    EgressNetwork,
    NetworkSetupError,
    tools_missing,
)
from sandbox_sdk.server.orchestrator.sandbox.process import Launch, ProcessExit, run_process
from sandbox_sdk.server.orchestrator.sandbox.rlimits import ProcessLimits
from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings
from sandbox_sdk.server.orchestrator.sandbox.statuses import (
    environment_not_found,
    file_errors,
    not_running,
)
from sandbox_sdk.server.orchestrator.sandbox.store import EnvironmentStore
from sandbox_sdk.server.orchestrator.sandbox.workspace import (
    Workspace,
    WorkspaceLayout,
    destroy_layout,
    split_path,
)
from sandbox_sdk.server.request_ids import DuplicateRequestError
from sandbox_sdk.server.status import ServiceError, invalid_argument

log = logging.getLogger(__name__)

_CGROUP_REMOVE_ATTEMPTS = 50
_ACTIVITY_SAVE_INTERVAL_SECONDS = 1.0


@dataclass
class _Runtime:
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


class SandboxManager:
    """Creates, runs, monitors and expires environments; implements ``ports.SandboxPort``.

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
    ) -> None:
        if not ids.ORCHESTRATOR_ID_PATTERN.match(orchestrator_id):
            raise ValueError(f"orchestrator id {orchestrator_id!r} must match [a-z0-9]{{1,16}}")
        self.settings = settings
        self.orchestrator_id = orchestrator_id
        self.workspace_root = Path(workspace_root)
        self._store = EnvironmentStore(db)
        self._metrics = SandboxMetrics(registry)
        self._isolation = isolation
        self._system_mounts = system_mounts(settings.read_only_paths)
        self._runtimes: dict[str, _Runtime] = {}
        self._terminations: dict[str, asyncio.Task[Environment]] = {}
        self._callbacks: list[Callable[[str], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Future[Environment]] = set()
        self._sandbox_launcher: SandboxLauncher | None = None
        self._unsaved: dict[str, Environment] = {}
        self._admission = Admission(settings, self.workspace_root)
        self._queue = CreateQueue(settings.max_queued_environments, settings.max_queued_file_bytes)
        self._egress_missing: list[str] = []

    # --- start and stop ----------------------------------------------------------------

    @property
    def isolation(self) -> Isolation:
        """The isolation layers in force; known once started."""
        if self._isolation is None:
            raise RuntimeError("SandboxManager.start() has not run yet")
        return self._isolation

    async def start(self) -> None:
        """Detects isolation, cleans up after a previous run, starts the reaper and monitor."""
        self.workspace_root.mkdir(parents=True, exist_ok=True)
        if self._isolation is None:
            self._isolation = await asyncio.to_thread(detect_isolation, self.settings)
        if self.isolation.sandbox_user is not None:
            self.settings.mount_root.mkdir(parents=True, exist_ok=True)
            self.settings.mount_root.chmod(0o711)
        shared = self.settings.mount_root if self.isolation.sandbox_user else self.workspace_root
        self._sandbox_launcher = SandboxLauncher(
            self.isolation, self.settings, self._system_mounts, write_resolv_conf(shared)
        )
        self._egress_missing = tools_missing()
        if not self.isolation.bwrap_path:
            self._egress_missing.append("bubblewrap")
        await self._recover()
        await self._sweep_orphans()
        self._tasks = [
            asyncio.create_task(self._reap_forever(), name="sandbox-reaper"),
            asyncio.create_task(self._monitor_forever(), name="sandbox-monitor"),
        ]

    async def stop(self) -> None:
        """Stops the background tasks and terminates every environment.

        Processes cannot outlive the orchestrator, so environments do not
        either: each ends ORCHESTRATOR_RESTARTED, saying the orchestrator shut down.
        """
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await asyncio.gather(
            *(
                self._terminate(
                    environment_id,
                    TerminationReason.ORCHESTRATOR_RESTARTED,
                    "the orchestrator shut down; environments do not outlive it",
                )
                for environment_id in [*self._runtimes, *(q.environment.id for q in self._queue)]
            )
        )
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _recover(self) -> None:
        for environment in self._store.unfinished(self.orchestrator_id):
            log.warning(
                "environment %s was %s when the orchestrator last stopped; terminating it",
                environment.id,
                environment.state.value,
            )
            await self._remove_leftovers(environment.id)
            # A create still in flight at the crash never answered: its retry (same
            # request_id) must start afresh, not get this dead environment back.
            unanswered = environment.state in (EnvironmentState.CREATING, EnvironmentState.QUEUED)
            self._store.update(
                environment,
                state=EnvironmentState.TERMINATED,
                termination_reason=TerminationReason.ORCHESTRATOR_RESTARTED,
                termination_message="the orchestrator restarted and the environment's "
                "processes were gone",
                terminate_time=time.time(),
                request_id="" if unanswered else environment.request_id,
            )
            self._metrics.environments_terminated.labels(
                TerminationReason.ORCHESTRATOR_RESTARTED.value
            ).inc()
            self._notify_terminated(environment.id)

    async def _sweep_orphans(self) -> None:
        """Removes cgroups and workspaces left behind by TERMINATED environments."""
        names = {path.name.removesuffix(".img") for path in self._workspace_entries()}
        if self.isolation.cgroups is not None:
            names.update(self.isolation.cgroups.environment_ids())
        ours = {n for n in names if ids.is_valid(n, ids.ENVIRONMENT)}
        for name in sorted(n for n in ours if ids.owner_of(n) == self.orchestrator_id):
            environment = self._store.get(name)
            if environment is not None and environment.state is EnvironmentState.TERMINATED:
                log.warning("removing what is left of terminated environment %s", name)
                await self._remove_leftovers(name)

    def _workspace_entries(self) -> list[Path]:
        roots = [self.workspace_root]
        if self.isolation.sandbox_user is not None:
            roots.append(self.settings.mount_root)
        return [entry for root in roots if root.is_dir() for entry in root.iterdir()]

    async def _remove_leftovers(self, environment_id: str) -> None:
        driver = self.isolation.cgroups
        if driver is not None:
            cgroup = driver.environment(environment_id)
            await cgroup.kill_all()
            await self._remove_cgroup(cgroup)
        else:
            kill_marked_processes(environment_id)
        await destroy_layout(self._layout(environment_id))

    # --- lifecycle ---------------------------------------------------------------------

    async def create_environment(self, tenant: str, new: NewEnvironment) -> Environment:
        """Creates an environment and returns it RUNNING (or QUEUED, see below).

        A repeated ``request_id`` of the tenant returns the first environment.
        Raises RESOURCE_EXHAUSTED (CAPACITY_EXHAUSTED) when there is no room for it
        (see :mod:`.admission`), unless ``new.queue_when_full`` asks to wait: then
        it is returned QUEUED and started as soon as room frees up.
        """
        if new.request_id:
            existing = self._store.find_by_request(tenant, new.request_id)
            if existing is not None:
                return await self._settled(existing)
        self._check_network(tenant, new.spec.network)
        refusals = self._refusals(tenant, new.spec)
        queued = bool(refusals) and new.queue_when_full and self._queue.takes(new.files)
        if refusals and not queued:
            raise self._no_room(refusals, queue_full=new.queue_when_full)
        now = time.time()
        environment = Environment(
            id=ids.new_id(ids.ENVIRONMENT, self.orchestrator_id),
            tenant=tenant,
            spec=new.spec,
            state=EnvironmentState.QUEUED if queued else EnvironmentState.CREATING,
            termination_reason=TerminationReason.UNSPECIFIED,
            termination_message="",
            isolation=self.isolation.level,
            orchestrator_id=self.orchestrator_id,
            create_time=now,
            expire_time=now + new.spec.ttl_seconds,
            last_activity_time=now,
            terminate_time=None,
            request_id=new.request_id,
        )
        try:
            self._store.insert(environment)
        except DuplicateRequestError:
            existing = self._store.find_by_request(tenant, new.request_id)
            if existing is None:
                raise
            return await self._settled(existing)
        if queued:
            position = self._queue.add(QueuedCreate(environment, new.files))
            log.info("environment %s queued at %d: %s", environment.id, position, refusals)
            return replace(environment, queue_position=position)
        return await asyncio.shield(self._start_creating(environment, new.files))

    def _start_creating(
        self, environment: Environment, files: Sequence[FileWrite]
    ) -> asyncio.Future[Environment]:
        """Holds the environment's room at once and sets it up in the background."""
        active = environment.last_activity_time
        runtime = _Runtime(
            environment.tenant, environment.spec, environment.expire_time, active, active
        )
        self._runtimes[environment.id] = runtime
        self._publish_allocation()
        # The set-up outlives a caller that goes away (a deadline, a cut connection):
        # its retry with the same request_id then finds the environment RUNNING,
        # never one killed half-way, and no mount or loop device is left behind.
        setup = asyncio.ensure_future(self._bring_up(environment, runtime, files))
        self._background.add(setup)
        setup.add_done_callback(_forget_background(self._background))
        return setup

    async def _bring_up(
        self, environment: Environment, runtime: _Runtime, files: Sequence[FileWrite]
    ) -> Environment:
        """Sets the environment up and marks it RUNNING; on failure ends it SETUP_FAILED
        and frees its request_id, so that a retry starts afresh."""
        started = time.monotonic()
        try:
            await self._set_up(environment.id, runtime, files)
        except BaseException as error:
            await asyncio.shield(self._fail_setup(environment, runtime, error))
            if isinstance(error, ServiceError | asyncio.CancelledError):
                raise
            log.exception("setting up environment %s failed", environment.id)
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                ErrorReason.INTERNAL,
                f"could not set up environment {environment.id} ({error}); try again",
            ) from error
        environment = self._store.update(environment, state=EnvironmentState.RUNNING)
        runtime.ready.set()
        self._metrics.create_seconds.observe(time.monotonic() - started)
        return environment

    async def _settled(self, environment: Environment) -> Environment:
        runtime = self._runtimes.get(environment.id)
        if environment.state is EnvironmentState.CREATING and runtime is not None:
            await runtime.ready.wait()
        return self._decorated(self._store.get(environment.id) or environment)

    def _admit_queued(self) -> None:
        """Starts the waiting creates that fit now, oldest first (what is held is read
        from the disk once per pass, not once per waiting create)."""
        if not len(self._queue):
            return
        held = self._claims()
        for entry in self._queue:
            environment = entry.environment
            claim = _claim(environment.tenant, environment.spec)
            if self._admission.refusals(claim, held, check_disk=self.isolation.loop_quota):
                continue
            held.append(claim)
            self._queue.remove(environment.id)
            now = time.time()
            environment = self._store.update(
                environment,
                state=EnvironmentState.CREATING,
                expire_time=now + environment.spec.ttl_seconds,
                last_activity_time=now,
            )
            self._start_creating(environment, entry.files)

    def _check_network(self, tenant: str, network: NetworkPolicy) -> None:
        if network is NetworkPolicy.HOST and tenant not in self.settings.host_network_tenants:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                ErrorReason.NETWORK_NOT_ALLOWED,
                "the host's network (NETWORK_POLICY_HOST) exposes the host's own services and "
                "is only for tenants the operator lists in sandbox.host_network_tenants; "
                "use NETWORK_POLICY_EGRESS (network='egress') for outbound connections",
            )
        if network is NetworkPolicy.EGRESS and self._egress_missing:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                ErrorReason.NETWORK_UNAVAILABLE,
                "egress networking needs "
                + ", ".join(self._egress_missing)
                + " on the orchestrator's host: ask its operator to install them "
                "(apt-get install slirp4netns nftables), or use NETWORK_POLICY_NONE",
            )

    def _refusals(self, tenant: str, spec: EnvironmentSpec) -> list[tuple[str, str]]:
        return self._admission.refusals(
            _claim(tenant, spec), self._claims(), check_disk=self.isolation.loop_quota
        )

    def _claims(self) -> list[Claim]:
        return [
            _claim(runtime.tenant, runtime.spec, self._layout(environment_id).image)
            for environment_id, runtime in self._runtimes.items()
        ]

    def _no_room(self, refusals: list[tuple[str, str]], *, queue_full: bool) -> ServiceError:
        queue = (
            f"the queue of waiting creates is full too (at most {self._queue.limit} creates "
            f"and {self._queue.limit_bytes} bytes of their files)"
            if queue_full
            else "or pass queue_when_full (queue=True in the SDK) to wait for room"
        )
        return ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            ErrorReason.CAPACITY_EXHAUSTED,
            "this orchestrator has no room for the environment now; retry in a moment, ask "
            f"for smaller limits, delete environments you no longer need, {queue}",
            quota_violations=refusals,
            retry_after=self._retry_after(),
        )

    def _retry_after(self) -> float:
        """The RetryInfo delay of CAPACITY_EXHAUSTED: about a second, spread.

        Deletes free room within a second; waiting for the next ttl expiry
        would outlast the SDK's whole retry deadline.
        """
        from sandbox_sdk.server.retry_delays import capacity_retry_delay

        return capacity_retry_delay()

    def _allocation(self) -> tuple[int, float, int]:
        runtimes = self._runtimes.values()
        return (
            len(runtimes),
            sum(r.spec.limits.cpu_cores for r in runtimes),
            sum(r.spec.limits.memory_bytes for r in runtimes),
        )

    def _publish_allocation(self) -> None:
        self._metrics.set_allocation(*self._allocation())

    def _layout(self, environment_id: str) -> WorkspaceLayout:
        mount_root = self.settings.mount_root if self.isolation.sandbox_user else None
        return WorkspaceLayout.for_environment(self.workspace_root, mount_root, environment_id)

    async def _set_up(
        self, environment_id: str, runtime: _Runtime, files: Sequence[FileWrite]
    ) -> None:
        isolation = self.isolation
        limits = runtime.spec.limits
        if isolation.cgroups is not None:
            runtime.cgroup = isolation.cgroups.environment(environment_id)
            runtime.cgroup.create(limits.cpu_cores, limits.memory_bytes, limits.max_pids)

        async def make_workspace() -> None:
            runtime.workspace = await Workspace.create(
                self._layout(environment_id),
                quota_bytes=limits.disk_bytes,
                loop_quota=isolation.loop_quota,
                owner=isolation.sandbox_user,
            )

        # The agent's process waits at its gate while the workspace is made.
        async with runtime.agent_lock:
            await self._start_agent(environment_id, runtime, prepare=make_workspace())
        workspace = runtime.files()
        for index, file in enumerate(files):
            field_path = f"files[{index}].path"
            with file_errors(field_path, file.path, limits.disk_bytes, self.workspace_root):
                await asyncio.to_thread(
                    workspace.write_file, split_path(file.path), file.content, file.mode
                )

    async def _fail_setup(
        self, environment: Environment, runtime: _Runtime, error: BaseException
    ) -> None:
        try:
            await self._release(environment.id, runtime)
        finally:
            self._runtimes.pop(environment.id, None)
            self._store.update(
                environment,
                state=EnvironmentState.TERMINATED,
                termination_reason=TerminationReason.SETUP_FAILED,
                termination_message=f"setting up failed: {error}"[:1000],
                terminate_time=time.time(),
                request_id="",
            )
            runtime.ready.set()
            runtime.terminated.set()
            self._publish_allocation()
            self._metrics.environments_terminated.labels(TerminationReason.SETUP_FAILED.value).inc()

    def get_environment(self, tenant: str, environment_id: str) -> Environment:
        """The tenant's environment; NOT_FOUND for unknown ids and other tenants' ones."""
        environment = self._record(environment_id)
        if environment is None or environment.tenant != tenant:
            raise environment_not_found(environment_id)
        return self._with_activity(environment)

    def list_environments(self, tenant: str, query: ListQuery) -> tuple[list[Environment], str]:
        """One page of the tenant's environments, newest first, and the next page token."""
        query_fingerprint = page_tokens.fingerprint(
            "environments",
            {"labels": dict(query.label_selector), "terminated": query.show_terminated},
        )
        before: int | None = None
        if query.page_token:
            try:
                position = page_tokens.decode(query.page_token, query_fingerprint)
            except page_tokens.PageTokenError as error:
                raise invalid_argument([("page_token", str(error))]) from error
            if not isinstance(position, int):
                raise invalid_argument([("page_token", "is not a page token of this listing")])
            before = position
        environments, next_seq = self._store.page(
            tenant,
            before_seq=before,
            limit=query.page_size,
            label_selector=query.label_selector,
            show_terminated=query.show_terminated,
        )
        token = page_tokens.encode(next_seq, query_fingerprint) if next_seq is not None else ""
        return [self._with_activity(e) for e in environments], token

    def update_environment(
        self, tenant: str, environment_id: str, update: EnvironmentUpdate
    ) -> Environment:
        """Changes labels, ttl (counted from creation) or idle timeout of a running environment."""
        environment, runtime = self._running(tenant, environment_id)
        spec = environment.spec
        if update.labels is not None:
            spec = replace(spec, labels=dict(update.labels))
        if update.ttl_seconds is not None:
            spec = replace(spec, ttl_seconds=update.ttl_seconds)
        if update.idle_timeout_seconds is not None:
            spec = replace(spec, idle_timeout_seconds=update.idle_timeout_seconds)
        runtime.spec = spec
        runtime.expire_time = environment.create_time + spec.ttl_seconds
        return self._store.update(environment, spec=spec, expire_time=runtime.expire_time)

    async def delete_environment(self, tenant: str, environment_id: str) -> Environment:
        """Kills every process, removes the workspace; returns the TERMINATED environment."""
        environment = self.get_environment(tenant, environment_id)
        return await self._terminate(
            environment.id, TerminationReason.USER_DELETED, "deleted by DeleteEnvironment"
        )

    async def _terminate(
        self, environment_id: str, reason: TerminationReason, message: str
    ) -> Environment:
        task = self._terminations.get(environment_id)
        if task is None:
            environment = self._record(environment_id)
            if environment is None:
                raise environment_not_found(environment_id)
            if environment.state is EnvironmentState.TERMINATED:
                return environment
            task = asyncio.create_task(self._run_termination(environment_id, reason, message))
            self._terminations[environment_id] = task
            task.add_done_callback(lambda _: self._terminations.pop(environment_id, None))
        return await asyncio.shield(task)

    async def _run_termination(
        self, environment_id: str, reason: TerminationReason, message: str
    ) -> Environment:
        self._queue.remove(environment_id)
        runtime = self._runtimes.get(environment_id)
        if runtime is not None:
            await runtime.ready.wait()
            self._save_activity(environment_id, runtime)
        environment = self._record(environment_id)
        if environment is None:
            raise environment_not_found(environment_id)
        if environment.state is EnvironmentState.TERMINATED:
            return environment
        environment = self._save(environment, state=EnvironmentState.TERMINATING)
        try:
            if runtime is not None:
                await self._release(environment_id, runtime)
            else:
                await self._remove_leftovers(environment_id)
        except Exception:
            # The environment is over either way; the next start sweeps what is left.
            log.exception("cleaning up environment %s failed", environment_id)
        finally:
            self._runtimes.pop(environment_id, None)
            environment = self._save(
                environment,
                state=EnvironmentState.TERMINATED,
                termination_reason=reason,
                termination_message=message,
                terminate_time=time.time(),
            )
            self._publish_allocation()
            self._metrics.environments_terminated.labels(reason.value).inc()
            if runtime is not None:
                runtime.terminated.set()
            self._notify_terminated(environment_id)
            self._admit_queued()
        log.info("environment %s terminated: %s (%s)", environment_id, reason.value, message)
        return environment

    def _save(self, environment: Environment, **changes: Any) -> Environment:
        """Applies ``changes`` and saves them; on a full disk the record waits in memory
        (the reaper saves it later) so that ending an environment, which frees space,
        never fails for want of space."""
        updated = replace(environment, **changes)
        try:
            self._store.save(updated)
        except sqlite3.Error as error:
            log.warning("could not save environment %s yet: %s", environment.id, error)
            self._unsaved[environment.id] = updated
        else:
            self._unsaved.pop(environment.id, None)
        return updated

    def _save_pending(self) -> None:
        for environment in list(self._unsaved.values()):
            self._save(environment)

    def _record(self, environment_id: str) -> Environment | None:
        """The environment's record, with changes not saved yet."""
        return self._unsaved.get(environment_id) or self._store.get(environment_id)

    async def _release(self, environment_id: str, runtime: _Runtime) -> None:
        """Kills the environment's processes and removes its cgroups and workspace."""
        runtime.releasing = True
        for running in runtime.execs.values():
            running.cancel.set()
        # Running commands see their cancel event and end CANCELLED as soon as
        # their callers read on; their processes die here, whoever is reading.
        if runtime.cgroup is None:
            kill_marked_processes(environment_id)
        elif not await runtime.cgroup.kill_all():
            log.error("processes of cgroup %s survive SIGKILL", runtime.cgroup.dirs)
        if runtime.agent is not None:
            await runtime.agent.close()
        if runtime.network is not None:
            await runtime.network.close()
        if runtime.cgroup is not None:
            await self._remove_cgroup(runtime.cgroup)
        if runtime.workspace is not None:
            await runtime.workspace.destroy()

    async def _remove_cgroup(self, cgroup: EnvironmentCgroup) -> None:
        for _ in range(_CGROUP_REMOVE_ATTEMPTS):
            if cgroup.remove():
                return
            cgroup.signal_all()
            await asyncio.sleep(0.01)
        log.error("cgroup %s could not be removed: processes are still inside", cgroup.dirs)

    def _notify_terminated(self, environment_id: str) -> None:
        for callback in self._callbacks:
            try:
                callback(environment_id)
            except Exception:
                log.exception("on_terminated callback failed for %s", environment_id)

    # --- checks ------------------------------------------------------------------------

    def _running(self, tenant: str, environment_id: str) -> tuple[Environment, _Runtime]:
        environment = self.get_environment(tenant, environment_id)
        return self._running_environment(environment)

    def _running_environment(self, environment: Environment) -> tuple[Environment, _Runtime]:
        runtime = self._runtimes.get(environment.id)
        if not environment.running or runtime is None or runtime.workspace is None:
            raise not_running(environment)
        return environment, runtime

    def _live(self, environment_id: str, tenant: str | None = None) -> _Runtime | None:
        """The runtime of a RUNNING environment (of ``tenant``, if given), without a database
        read; None if it is not one (the caller then finds out why, from the record)."""
        runtime = self._runtimes.get(environment_id)
        if runtime is None or (tenant is not None and runtime.tenant != tenant):
            return None
        # ready is set once the record says RUNNING; releasing once it no longer does.
        if not runtime.ready.is_set() or runtime.releasing or runtime.workspace is None:
            return None
        return runtime

    def _running_by_id(self, environment_id: str) -> tuple[Environment, _Runtime]:
        environment = self._store.get(environment_id)
        if environment is None:
            raise environment_not_found(environment_id)
        return self._running_environment(environment)

    # --- commands ----------------------------------------------------------------------

    async def exec_command(
        self, tenant: str, environment_id: str, command: Command
    ) -> AsyncGenerator[ExecEvent, None]:
        """Runs a command; yields started, output chunks as produced, then exited."""
        runtime = self._live(environment_id, tenant) or self._running(tenant, environment_id)[1]
        async with contextlib.aclosing(self._exec(environment_id, runtime, command)) as events:
            async for event in events:
                yield event

    async def _exec(
        self, environment_id: str, runtime: _Runtime, command: Command
    ) -> AsyncGenerator[ExecEvent, None]:
        workspace = runtime.files()
        cwd = split_path(command.cwd, allow_root=True) if command.cwd else ()
        if cwd:
            with file_errors("cwd", command.cwd, workspace.quota_bytes):
                workspace.require_directory(cwd)
        self.touch(environment_id)
        limits = self._process_limits(runtime)
        runtime.exec_count += 1
        number = runtime.exec_count
        running = RunningCommand()
        runtime.execs[number] = running
        try:
            agent = await self._agent(environment_id, runtime)
            launch = Launch(
                request=spawn_request(
                    self.isolation,
                    command,
                    environment_id=environment_id,
                    spec=runtime.spec,
                    layout=workspace.layout,
                    cwd=cwd,
                    limits=limits,
                ),
                stdin=command.stdin,
                timeout_seconds=command.timeout_seconds or runtime.spec.limits.exec_timeout_seconds,
                output_cap_bytes=command.output_cap_bytes,
                chunk_bytes=self.settings.output_chunk_bytes,
            )
            oom_kills_before = self._oom_kills(runtime)

            def started(pid: int) -> None:
                running.pid = pid

            process = run_process(agent, launch, on_started=started, cancel=running.cancel)
            async with contextlib.aclosing(process) as events:
                async for event in events:
                    if isinstance(event, ProcessExit):
                        # Only a failed command can be an OOM kill: one file read less.
                        failed = event.returncode != 0
                        oom_kills = self._oom_kills(runtime) - oom_kills_before if failed else 0
                        yield self._command_exited(event, runtime, oom_kills, limits)
                    else:
                        yield event
        except AgentError as error:
            raise self._cannot_start(environment_id, runtime, error) from error
        finally:
            runtime.execs.pop(number, None)
            self.touch(environment_id)

    async def _agent(self, environment_id: str, runtime: _Runtime) -> AgentClient:
        """The environment's agent; started when there is none or the last one died."""
        async with runtime.agent_lock:
            if runtime.agent is not None and not runtime.agent.closed:
                return runtime.agent
            if runtime.releasing:
                raise AgentError("the environment is terminating")
            if runtime.agent is not None:
                log.warning(
                    "the agent of environment %s died (its processes with it); starting another",
                    environment_id,
                )
                await runtime.agent.close()
            if runtime.network is not None:
                await runtime.network.close()
            return await self._start_agent(environment_id, runtime)

    async def _start_agent(
        self,
        environment_id: str,
        runtime: _Runtime,
        prepare: Coroutine[Any, Any, None] | None = None,
    ) -> AgentClient:
        """Starts the environment's agent (``prepare`` is awaited meanwhile: see
        :meth:`AgentClient.start`); the caller holds ``runtime.agent_lock``."""
        try:
            sandbox = await self._launcher().start(
                environment_id=environment_id,
                spec=runtime.spec,
                layout=self._layout(environment_id),
                limits=self._process_limits(runtime),
                cgroup=runtime.cgroup,
                prepare=prepare,
                on_violation=lambda detail: self._agent_broke_protocol(environment_id, detail),
            )
        except NetworkSetupError as error:
            raise AgentError(f"its network could not be set up: {error}") from error
        runtime.agent, runtime.network = sandbox.agent, sandbox.network
        return sandbox.agent

    def _launcher(self) -> SandboxLauncher:
        if self._sandbox_launcher is None:
            raise RuntimeError("SandboxManager.start() has not run yet")
        return self._sandbox_launcher

    def _agent_broke_protocol(self, environment_id: str, detail: str) -> None:
        """Ends the environment whose agent misbehaved (a command tampered with it)."""
        message = (
            "the environment's agent broke its protocol with the orchestrator, so a "
            f"process in the environment may have tampered with it ({detail}); the "
            "environment was ended to contain it: create a new one"
        )
        task = asyncio.ensure_future(
            self._terminate(environment_id, TerminationReason.SANDBOX_VIOLATION, message)
        )
        self._background.add(task)
        task.add_done_callback(_forget_background(self._background))

    def _cannot_start(
        self, environment_id: str, runtime: _Runtime, error: AgentError
    ) -> ServiceError:
        if runtime.releasing:
            environment = self._store.get(environment_id)
            return (
                environment_not_found(environment_id)
                if environment is None
                else not_running(environment)
            )
        return ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            ErrorReason.QUOTA_EXCEEDED,
            f"the command could not be started in environment {environment_id} ({error}); "
            "it may be at its max_pids or memory limit: end some of its processes, or "
            "create an environment with larger spec.limits",
        )

    @staticmethod
    def _oom_kills(runtime: _Runtime) -> int:
        return runtime.cgroup.oom_kills() if runtime.cgroup is not None else 0

    def _process_limits(self, runtime: _Runtime) -> ProcessLimits:
        isolation = self.isolation
        return ProcessLimits.for_environment(
            runtime.spec.limits,
            address_space_headroom_bytes=self.settings.address_space_headroom_bytes,
            open_files=self.settings.max_open_files,
            limit_processes_per_uid=isolation.cgroups is None and bool(isolation.sandbox_user),
        )

    def _command_exited(
        self, event: ProcessExit, runtime: _Runtime, oom_kills: int, limits: ProcessLimits
    ) -> ExecExited:
        exited = exit_event(event, oom_kills, limits)
        if runtime.cgroup is None:
            runtime.usage.record_finished_command(exited.cpu_seconds, exited.memory_peak_bytes)
        self._metrics.execs.labels(exited.reason.value).inc()
        return exited

    # --- files -------------------------------------------------------------------------

    async def write_file(
        self, tenant: str, environment_id: str, file: FileWrite, *, field_path: str = "file.path"
    ) -> FileEntry:
        """Writes a workspace file, creating its directories; once this returns, the
        bytes are on disk (a full disk is RESOURCE_EXHAUSTED, never a lost write)."""
        _, runtime = self._running(tenant, environment_id)
        workspace = runtime.files()
        self.touch(environment_id)
        with file_errors(field_path, file.path, workspace.quota_bytes, self.workspace_root):
            return await asyncio.to_thread(
                workspace.write_file, split_path(file.path), file.content, file.mode
            )

    async def read_workspace_file(
        self, tenant: str, environment_id: str, path: str
    ) -> tuple[FileEntry, bytes]:
        """A workspace file's metadata and bytes (read off the event loop)."""
        _, runtime = self._running(tenant, environment_id)
        return await asyncio.to_thread(self._read, environment_id, runtime, path)

    def _read(self, environment_id: str, runtime: _Runtime, path: str) -> tuple[FileEntry, bytes]:
        workspace = runtime.files()
        self.touch(environment_id)
        with file_errors("path", path, workspace.quota_bytes):
            return workspace.read_file(split_path(path), self.settings.max_read_file_bytes)

    def list_files(
        self, tenant: str, environment_id: str, path: str, page_size: int, page_token: str
    ) -> tuple[list[FileEntry], str]:
        """One page of a workspace directory's entries, sorted by path: a signed cursor
        that reads only the page's entries (see ``file_pages`` and ``listing``)."""
        from sandbox_sdk.server.orchestrator.sandbox.file_pages import files_page

        _, runtime = self._running(tenant, environment_id)
        self.touch(environment_id)
        return files_page(runtime.files(), path, page_size, page_token)

    # --- usage and capacity ------------------------------------------------------------

    def environment_usage(self, tenant: str, environment_id: str) -> tuple[Usage, EnvironmentSpec]:
        """A fresh usage sample and the spec (for its limits)."""
        environment, runtime = self._running(tenant, environment_id)
        return self._sample(runtime), environment.spec

    async def stream_usage(
        self, tenant: str, environment_id: str, interval_seconds: float
    ) -> AsyncGenerator[Usage, None]:
        """A sample every ``interval_seconds`` until the environment terminates."""
        _, runtime = self._running(tenant, environment_id)
        while not runtime.releasing:
            yield self._sample(runtime)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runtime.terminated.wait(), interval_seconds)

    def _sample(self, runtime: _Runtime) -> Usage:
        return runtime.usage.sample(runtime.cgroup, runtime.files(), runtime.live_pids())

    def capacity(self) -> Capacity:
        """What is promised to running environments, and the totals."""
        count, cpu, memory = self._allocation()
        return Capacity(
            orchestrator_id=self.orchestrator_id,
            environments_running=count,
            environments_max=self.settings.max_environments,
            cpu_cores_allocated=cpu,
            cpu_cores_total=self.settings.cpu_cores_total,
            memory_bytes_allocated=memory,
            memory_bytes_total=self.settings.memory_bytes_total,
            isolation=self.isolation.level,
        )

    # --- background tasks --------------------------------------------------------------

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reaper_interval_seconds)
            try:
                await self._reap()
            except Exception:
                log.exception("reaping expired environments failed")

    async def _reap(self) -> None:
        """Saves activity kept in memory; terminates environments whose ttl ran out or that
        sat idle too long; starts waiting creates that fit now."""
        self._save_pending()
        self._admit_queued()
        now = time.time()
        due: list[tuple[str, TerminationReason, str]] = []
        for environment_id, runtime in list(self._runtimes.items()):
            if not runtime.ready.is_set() or environment_id in self._terminations:
                continue
            self._save_activity(environment_id, runtime)
            spec = runtime.spec
            if now >= runtime.expire_time:
                message = f"its ttl of {spec.ttl_seconds:g}s ran out"
                due.append((environment_id, TerminationReason.TTL_EXPIRED, message))
            elif not runtime.execs and now - runtime.last_activity >= spec.idle_timeout_seconds:
                message = f"no command or file call for {spec.idle_timeout_seconds:g}s"
                due.append((environment_id, TerminationReason.IDLE_TIMEOUT, message))
        results = await asyncio.gather(
            *(self._terminate(*item) for item in due), return_exceptions=True
        )
        for (environment_id, _, _), result in zip(due, results, strict=True):
            if isinstance(result, BaseException):
                log.error("terminating %s failed: %r", environment_id, result)

    async def _monitor_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.monitor_interval_seconds)
            try:
                self._monitor()
            except Exception:
                log.exception("sampling environment usage failed")

    def _monitor(self) -> None:
        """Samples every running environment; enforces disk quotas the kernel does not."""
        for environment_id, runtime in list(self._runtimes.items()):
            if not runtime.ready.is_set() or runtime.releasing or runtime.workspace is None:
                continue
            usage = self._sample(runtime)
            quota = runtime.workspace.quota_bytes
            if not runtime.workspace.quota_enforced_by_kernel and usage.disk_bytes > quota:
                log.warning(
                    "environment %s uses %d bytes of disk, over its %d quota: killing its commands",
                    environment_id,
                    usage.disk_bytes,
                    quota,
                )
                for running in runtime.execs.values():
                    running.cancel.set()

    # --- ports.SandboxPort -------------------------------------------------------------

    def require_running(self, tenant: str, environment_id: str) -> None:
        """Raises NOT_FOUND (unknown, another tenant's) or FAILED_PRECONDITION (not RUNNING)."""
        self._running(tenant, environment_id)

    async def run_command(
        self,
        environment_id: str,
        argv: Sequence[str],
        *,
        stdin: bytes = b"",
        timeout: float = 10.0,
        env_vars: Mapping[str, str] | None = None,
        output_limit_bytes: int = 1 << 20,
    ) -> CommandResult:
        """Runs a command in the environment's sandbox and waits for it."""
        runtime = self._live(environment_id) or self._running_by_id(environment_id)[1]
        command = validation.internal_command(
            argv,
            env_vars=env_vars or {},
            stdin=stdin,
            timeout_seconds=timeout,
            output_cap_bytes=output_limit_bytes,
        )
        output: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        exited: ExecExited | None = None
        async with contextlib.aclosing(self._exec(environment_id, runtime, command)) as events:
            async for event in events:
                if isinstance(event, ExecOutput):
                    output[event.stream] += event.data
                elif isinstance(event, ExecExited):
                    exited = event
        if exited is None:
            raise RuntimeError(f"command {argv[0]!r} ended without an exit event")
        return CommandResult(
            exit_code=exited.exit_code,
            reason=exited.reason.value,
            stdout=bytes(output["stdout"]),
            stderr=bytes(output["stderr"]),
            stdout_truncated=exited.stdout_truncated,
            stderr_truncated=exited.stderr_truncated,
            cpu_seconds=exited.cpu_seconds,
            memory_peak_bytes=exited.memory_peak_bytes,
            duration_seconds=exited.duration_seconds,
        )

    def read_file(self, environment_id: str, path: str) -> bytes:
        """Reads a workspace file; INVALID_ARGUMENT or NOT_FOUND on bad paths."""
        _, runtime = self._running_by_id(environment_id)
        return self._read(environment_id, runtime, path)[1]

    def usage(self, environment_id: str) -> UsageSample:
        """A fresh usage sample of the environment."""
        _, runtime = self._running_by_id(environment_id)
        sample = self._sample(runtime)
        return UsageSample(
            cpu_seconds=sample.cpu_seconds,
            cpu_percent=sample.cpu_percent,
            memory_bytes=sample.memory_bytes,
            memory_peak_bytes=sample.memory_peak_bytes,
            pids=sample.pids,
            disk_bytes=sample.disk_bytes,
        )

    def touch(self, environment_id: str) -> None:
        """Records activity, which postpones idle expiry.

        A live environment's activity is kept in memory (which the idle reaper
        and reads of the environment use) and saved at most once a
        second, and on every reaper tick: a database write per command cost
        more than starting the command.
        """
        now = time.time()
        runtime = self._runtimes.get(environment_id)
        if runtime is None:
            with contextlib.suppress(sqlite3.Error):
                self._store.record_activity(environment_id, now)
            return
        runtime.last_activity = max(runtime.last_activity, now)
        if now - runtime.saved_activity >= _ACTIVITY_SAVE_INTERVAL_SECONDS:
            self._save_activity(environment_id, runtime)

    def _save_activity(self, environment_id: str, runtime: _Runtime) -> None:
        """Saves the activity kept in memory; best effort, so that a read or a command
        never fails for want of a database write (a full disk): memory stays right."""
        if runtime.last_activity > runtime.saved_activity:
            try:
                self._store.record_activity(environment_id, runtime.last_activity)
            except sqlite3.Error as error:
                log.warning("could not save the activity of %s: %s", environment_id, error)
                return
            runtime.saved_activity = runtime.last_activity

    def _with_activity(self, environment: Environment) -> Environment:
        """The record with the activity not saved yet (and its queue position)."""
        environment = self._decorated(environment)
        runtime = self._runtimes.get(environment.id)
        if runtime is None or runtime.last_activity <= environment.last_activity_time:
            return environment
        return replace(environment, last_activity_time=runtime.last_activity)

    def _decorated(self, environment: Environment) -> Environment:
        if environment.state is not EnvironmentState.QUEUED:
            return environment
        return replace(environment, queue_position=self._queue.position(environment.id))

    def on_terminated(self, callback: Callable[[str], None]) -> None:
        """Calls ``callback(environment_id)`` when an environment ends for any reason."""
        self._callbacks.append(callback)


def _forget_background(tasks: set[asyncio.Future[Environment]]) -> Callable[[Any], None]:
    """A done callback that drops a background task and logs what it raised (and nobody read)."""

    def forget(task: asyncio.Future[Environment]) -> None:
        tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, ServiceError):
            log.error("a background environment task failed: %r", error)

    return forget


def _claim(tenant: str, spec: EnvironmentSpec, image: Path | None = None) -> Claim:
    limits = spec.limits
    return Claim(tenant, limits.cpu_cores, limits.memory_bytes, limits.disk_bytes, image)
