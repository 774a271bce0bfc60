"""The sandbox layer's background tasks: the reaper and the usage monitor.

The reaper saves the activity kept in memory, ends environments whose ttl
ran out or that sat idle too long, and starts waiting creates that fit. The
monitor samples every running environment and enforces disk quotas the
kernel does not.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sandbox_sdk.server.orchestrator.sandbox.activity import Activity
from sandbox_sdk.server.orchestrator.sandbox.environment_record import TerminationReason
from sandbox_sdk.server.orchestrator.sandbox.environments import LiveEnvironments
from sandbox_sdk.server.orchestrator.sandbox.lifecycle import Lifecycle
from sandbox_sdk.server.orchestrator.sandbox.termination import Termination

log = logging.getLogger(__name__)


class BackgroundTasks:
    """Runs the reaper and the monitor from :meth:`start` until :meth:`stop`."""

    def __init__(
        self,
        environments: LiveEnvironments,
        activity: Activity,
        lifecycle: Lifecycle,
        termination: Termination,
    ) -> None:
        self._environments = environments
        self._settings = environments.settings
        self._activity = activity
        self._lifecycle = lifecycle
        self._termination = termination
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Starts the reaper and the monitor."""
        self._tasks = [
            asyncio.create_task(self._reap_forever(), name="sandbox-reaper"),
            asyncio.create_task(self._monitor_forever(), name="sandbox-monitor"),
        ]

    async def stop(self) -> None:
        """Stops both and waits until they have."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reaper_interval_seconds)
            try:
                await self.reap()
            except Exception:
                log.exception("reaping expired environments failed")

    async def reap(self) -> None:
        """Saves activity kept in memory; terminates environments whose ttl ran out or that
        sat idle too long; starts waiting creates that fit now."""
        self._environments.save_pending()
        self._lifecycle.admit_queued()
        now = time.time()
        due: list[tuple[str, TerminationReason, str]] = []
        for environment_id, runtime in list(self._environments.runtimes.items()):
            if not runtime.ready.is_set() or self._termination.ending(environment_id):
                continue
            self._activity.save(environment_id, runtime)
            spec = runtime.spec
            if now >= runtime.expire_time:
                message = f"its ttl of {spec.ttl_seconds:g}s ran out"
                due.append((environment_id, TerminationReason.TTL_EXPIRED, message))
            elif not runtime.execs and now - runtime.last_activity >= spec.idle_timeout_seconds:
                message = f"no command or file call for {spec.idle_timeout_seconds:g}s"
                due.append((environment_id, TerminationReason.IDLE_TIMEOUT, message))
        results = await asyncio.gather(
            *(self._termination.terminate(*item) for item in due), return_exceptions=True
        )
        for (environment_id, _, _), result in zip(due, results, strict=True):
            if isinstance(result, BaseException):
                log.error("terminating %s failed: %r", environment_id, result)

    async def _monitor_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.monitor_interval_seconds)
            try:
                self.monitor()
            except Exception:
                log.exception("sampling environment usage failed")

    def monitor(self) -> None:
        """Samples every running environment; enforces disk quotas the kernel does not."""
        for environment_id, runtime in list(self._environments.runtimes.items()):
            if not runtime.ready.is_set() or runtime.releasing or runtime.workspace is None:
                continue
            usage = runtime.sample()
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
