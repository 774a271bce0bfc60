"""Keeps the gateway's orchestrator pool in step with the orchestrator registry.

Every poll reads the live registrations and hands them to the pool. When the
store cannot be read the pool is left as it was: a store outage must not make
the gateway drop orchestrators that are still serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sandbox_sdk.server.gateway.orchestrators import OrchestratorPool
from sandbox_sdk.server.store.registry import OrchestratorRegistry

log = logging.getLogger(__name__)


class RegistryWatch:
    """Reads the registry every ``poll_seconds`` and applies it to ``pool``."""

    def __init__(
        self, registry: OrchestratorRegistry, pool: OrchestratorPool, poll_seconds: float
    ) -> None:
        self._registry = registry
        self._pool = pool
        self._poll_seconds = poll_seconds
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Applies the registry once, then keeps following it in the background."""
        await self.refresh()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        """Stops following and releases the registry's connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._registry.close)

    async def refresh(self) -> None:
        """Reads the live registrations once and applies them to the pool."""
        rows = await asyncio.to_thread(self._registry.list_all)
        await self._pool.follow_registry(rows, time.time())

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                await self.refresh()
            except Exception:  # keep the last known pool through a store outage
                log.exception("reading the orchestrator registry failed")
