"""GetTenantUsage: how many of a tenant's resources count against its quotas here.

The gateway asks on every create. Both answers are counters the stores keep in
the transactions that change states (``env_tenant_live``, ``exp_tenant_live``,
recounted from the rows on start), so a call reads one row of each by its key,
whatever the tenant's resources or history. The reads go through the shared
database connection, which a write on another thread may be holding, so they
run on a worker thread, both in one hop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sandbox_sdk.api.v1 import orchestrator_service_pb2

EnvironmentCount = Callable[[str], int]
"""The tenant's environments not yet TERMINATED (a blocking read)."""

ExperimentCounts = Callable[[str], tuple[int, int]]
"""The tenant's queued and running experiments (a blocking read)."""


def _no_experiments(tenant: str) -> tuple[int, int]:
    return 0, 0


class TenantUsage:
    """Reads a tenant's counts from the environment and experiment counters."""

    def __init__(
        self, environments: EnvironmentCount, experiments: ExperimentCounts | None = None
    ) -> None:
        """``experiments`` is None on a node without an experiment engine (counts 0)."""
        self._environments = environments
        self._experiments = experiments or _no_experiments

    def read(self, tenant: str) -> orchestrator_service_pb2.GetTenantUsageResponse:
        """The tenant's counts; blocks on the database."""
        queued, running = self._experiments(tenant)
        return orchestrator_service_pb2.GetTenantUsageResponse(
            environments_live=self._environments(tenant),
            experiments_queued=queued,
            experiments_running=running,
        )

    async def aread(self, tenant: str) -> orchestrator_service_pb2.GetTenantUsageResponse:
        """:meth:`read` on a worker thread."""
        return await asyncio.to_thread(self.read, tenant)
