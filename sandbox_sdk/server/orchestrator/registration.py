"""An orchestrator's entry in the registry: registered on start, renewed by heartbeat.

The heartbeat renews the lease every third of it, so one or two missed beats
do not drop a live orchestrator; a clean stop removes the row at once, and an
orchestrator that dies without stopping drops out when its lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sandbox_sdk.server.store.registry import Announcement, OrchestratorRegistry

log = logging.getLogger(__name__)


class Registration:
    """Keeps one orchestrator's lease in the registry alive."""

    def __init__(
        self, registry: OrchestratorRegistry, announcement: Announcement, lease_seconds: float
    ) -> None:
        self._registry = registry
        self._announcement = announcement
        self._lease_seconds = lease_seconds
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Registers now, then renews every third of the lease in the background."""
        await self._renew()
        self._heartbeat = asyncio.create_task(self._beat())

    async def drain(self) -> None:
        """Marks the orchestrator draining: gateways place no new environments on it."""
        await asyncio.to_thread(self._registry.drain, self._announcement.id)

    async def stop_heartbeat(self) -> None:
        """Stops renewing; the lease then runs out unless the row is removed."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None

    async def stop(self) -> None:
        """Stops renewing and removes the row, so gateways stop placing here at once."""
        await self.stop_heartbeat()
        await asyncio.to_thread(self._registry.remove, self._announcement.id)
        await asyncio.to_thread(self._registry.close)

    async def _renew(self) -> None:
        await asyncio.to_thread(self._registry.register, self._announcement, self._lease_seconds)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            try:
                await self._renew()
            except Exception:  # a store outage must not stop later beats
                log.exception("orchestrator=%s lease renewal failed", self._announcement.id)
