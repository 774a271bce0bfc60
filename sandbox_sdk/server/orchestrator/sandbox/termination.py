"""Ending environments: termination, and recovery from a previous run's crash.

An environment ends once (concurrent requests to end it share one
termination), whatever ends it: a delete, its ttl or idle timeout, a
misbehaving agent, the orchestrator stopping. Its processes are killed and
its cgroup, network and workspace removed; a cleanup that fails does not stop
it from ending (the next start sweeps what is left). An environment's
processes never outlive the orchestrator, so after a crash :meth:`recover`
ends the environments left over ORCHESTRATOR_RESTARTED.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from sandbox_sdk.server import ids
from sandbox_sdk.server.orchestrator.sandbox.activity import Activity
from sandbox_sdk.server.orchestrator.sandbox.cgroups import EnvironmentCgroup
from sandbox_sdk.server.orchestrator.sandbox.commands import kill_marked_processes
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Environment,
    EnvironmentState,
    TerminationReason,
)
from sandbox_sdk.server.orchestrator.sandbox.environments import LiveEnvironments
from sandbox_sdk.server.orchestrator.sandbox.runtime import Runtime
from sandbox_sdk.server.orchestrator.sandbox.statuses import environment_not_found
from sandbox_sdk.server.orchestrator.sandbox.workspace import destroy_layout

log = logging.getLogger(__name__)

_CGROUP_REMOVE_ATTEMPTS = 50


class Termination:
    """Ends environments and removes what they held; see the module docstring.

    ``on_room_freed`` is called after each termination: waiting creates may fit now.
    """

    def __init__(
        self,
        environments: LiveEnvironments,
        activity: Activity,
        on_room_freed: Callable[[], None],
    ) -> None:
        self._environments = environments
        self._activity = activity
        self._on_room_freed = on_room_freed
        self._terminations: dict[str, asyncio.Task[Environment]] = {}

    def ending(self, environment_id: str) -> bool:
        """Whether the environment's termination is under way."""
        return environment_id in self._terminations

    async def terminate(
        self, environment_id: str, reason: TerminationReason, message: str
    ) -> Environment:
        """Ends the environment (once, however many ask) and returns its TERMINATED record."""
        task = self._terminations.get(environment_id)
        if task is None:
            environment = self._environments.record(environment_id)
            if environment is None:
                raise environment_not_found(environment_id)
            if environment.state is EnvironmentState.TERMINATED:
                return environment
            task = asyncio.create_task(self._run(environment_id, reason, message))
            self._terminations[environment_id] = task
            task.add_done_callback(lambda _: self._terminations.pop(environment_id, None))
        return await asyncio.shield(task)

    def terminate_later(self, environment_id: str, reason: TerminationReason, message: str) -> None:
        """Ends the environment in the background (for callers that cannot wait)."""
        task = asyncio.ensure_future(self.terminate(environment_id, reason, message))
        self._environments.run_in_background(task)

    async def _run(
        self, environment_id: str, reason: TerminationReason, message: str
    ) -> Environment:
        environments = self._environments
        environments.queue.remove(environment_id)
        runtime = environments.runtimes.get(environment_id)
        if runtime is not None:
            await runtime.ready.wait()
            self._activity.save(environment_id, runtime)
        environment = environments.record(environment_id)
        if environment is None:
            raise environment_not_found(environment_id)
        if environment.state is EnvironmentState.TERMINATED:
            return environment
        environment = environments.save(environment, state=EnvironmentState.TERMINATING)
        try:
            if runtime is not None:
                await self.release(environment_id, runtime)
            else:
                await self.remove_leftovers(environment_id)
        except Exception:
            # The environment is over either way; the next start sweeps what is left.
            log.exception("cleaning up environment %s failed", environment_id)
        finally:
            environments.runtimes.pop(environment_id, None)
            environment = environments.save(
                environment,
                state=EnvironmentState.TERMINATED,
                termination_reason=reason,
                termination_message=message,
                terminate_time=time.time(),
            )
            environments.publish_allocation()
            environments.metrics.environments_terminated.labels(reason.value).inc()
            if runtime is not None:
                runtime.terminated.set()
            environments.notify_terminated(environment_id)
            self._on_room_freed()
        log.info("environment %s terminated: %s (%s)", environment_id, reason.value, message)
        return environment

    async def release(self, environment_id: str, runtime: Runtime) -> None:
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
            await _remove_cgroup(runtime.cgroup)
        if runtime.workspace is not None:
            await runtime.workspace.destroy()
        template, templates = runtime.spec.template, self._environments.templates
        if template is not None and templates is not None:
            templates.release(template, environment_id)

    async def remove_leftovers(self, environment_id: str) -> None:
        """Kills and removes what an environment without a runtime may have left."""
        driver = self._environments.isolation.cgroups
        if driver is not None:
            cgroup = driver.environment(environment_id)
            await cgroup.kill_all()
            await _remove_cgroup(cgroup)
        else:
            kill_marked_processes(environment_id)
        await destroy_layout(self._environments.layout(environment_id))

    # --- after a crash -----------------------------------------------------------------

    async def recover(self) -> None:
        """Ends the environments a previous run of this orchestrator left unfinished."""
        environments = self._environments
        for environment in environments.store.unfinished(environments.orchestrator_id):
            log.warning(
                "environment %s was %s when the orchestrator last stopped; terminating it",
                environment.id,
                environment.state.value,
            )
            await self.remove_leftovers(environment.id)
            # A create still in flight at the crash never answered: its retry (same
            # request_id) must start afresh, not get this dead environment back.
            unanswered = environment.state in (EnvironmentState.CREATING, EnvironmentState.QUEUED)
            environments.store.update(
                environment,
                state=EnvironmentState.TERMINATED,
                termination_reason=TerminationReason.ORCHESTRATOR_RESTARTED,
                termination_message="the orchestrator restarted and the environment's "
                "processes were gone",
                terminate_time=time.time(),
                request_id="" if unanswered else environment.request_id,
            )
            environments.metrics.environments_terminated.labels(
                TerminationReason.ORCHESTRATOR_RESTARTED.value
            ).inc()
            environments.notify_terminated(environment.id)

    async def sweep_orphans(self) -> None:
        """Removes cgroups and workspaces left behind by TERMINATED environments."""
        environments = self._environments
        names = {path.name.removesuffix(".img") for path in self._workspace_entries()}
        if environments.isolation.cgroups is not None:
            names.update(environments.isolation.cgroups.environment_ids())
        ours = {n for n in names if ids.is_valid(n, ids.ENVIRONMENT)}
        for name in sorted(n for n in ours if ids.owner_of(n) == environments.orchestrator_id):
            environment = environments.store.get(name)
            if environment is not None and environment.state is EnvironmentState.TERMINATED:
                log.warning("removing what is left of terminated environment %s", name)
                await self.remove_leftovers(name)

    def _workspace_entries(self) -> list[Path]:
        environments = self._environments
        roots = [environments.workspace_root]
        if environments.isolation.sandbox_user is not None:
            roots.append(environments.settings.mount_root)
        return [entry for root in roots if root.is_dir() for entry in root.iterdir()]


async def _remove_cgroup(cgroup: EnvironmentCgroup) -> None:
    for _ in range(_CGROUP_REMOVE_ATTEMPTS):
        if cgroup.remove():
            return
        cgroup.signal_all()
        await asyncio.sleep(0.01)
    log.error("cgroup %s could not be removed: processes are still inside", cgroup.dirs)
