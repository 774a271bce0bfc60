"""Per-tenant quotas on live environments and concurrent experiments.

Usage is counted on the orchestrators themselves when a create arrives, one
GetTenantUsage call each: an orchestrator answers from per-tenant counters it
keeps with every state change, so a create costs the same whatever the
tenant's live resources, and environments that expired or experiments that
finished free their slot without the gateway having to hear about it. Creates
still in flight through this gateway are counted too: a create registers
itself before counting, so two racing creates each see the other and the limit
cannot be overshot (at worst a finished create is counted twice for a moment,
which errs on the safe side).

Gateway replicas sharing a PostgreSQL store count each other's creates in
flight as well: there a create reserves its slot in the store (see
``store/reservations.py``), one at a time per tenant and quota.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import grpc

from sandbox_sdk.api.v1 import orchestrator_service_pb2
from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.gateway.config import LimitsConfig
from sandbox_sdk.server.gateway.methods import Quota
from sandbox_sdk.server.gateway.orchestrators import (
    OrchestratorLink,
    OrchestratorPool,
    call_metadata,
)
from sandbox_sdk.server.retry_delays import spread
from sandbox_sdk.server.status import ServiceError
from sandbox_sdk.server.store.reservations import DEFAULT_HOLD_SECONDS, SharedReservations

log = logging.getLogger(__name__)

_GET_TENANT_USAGE = "/sandbox.v1.OrchestratorService/GetTenantUsage"
_USAGE_REQUEST = orchestrator_service_pb2.GetTenantUsageRequest().SerializeToString()
# A reservation outlives its create's deadline by this much, for the gateway to release it.
_HOLD_MARGIN_SECONDS = 30.0

# How many of a tenant's resources count against a quota: (quota, tenant, request_id, timeout).
UsageCounter = Callable[[Quota, str, str, float | None], Awaitable[int]]


class QuotaEnforcer:
    """Admits a create only while the tenant is under its quota."""

    def __init__(
        self,
        pool: OrchestratorPool,
        limits: LimitsConfig,
        on_refused: Callable[[str], None] = lambda tenant: None,
        shared: SharedReservations | None = None,
        usage: UsageCounter | None = None,
    ) -> None:
        """Counts usage on ``pool`` (or with ``usage``); ``shared`` spans gateway replicas."""
        self._pool = pool
        self._limits = limits
        self._on_refused = on_refused
        self._shared = shared
        self._usage = usage or self._count
        self._in_flight: Counter[tuple[Quota, str]] = Counter()

    @asynccontextmanager
    async def reserve(
        self, quota: Quota, tenant: str, request_id: str, timeout: float | None
    ) -> AsyncIterator[None]:
        """Holds a slot of ``quota`` for the create running inside the ``async with``."""
        limit = self._limit(quota, tenant)
        if limit is None:
            yield
            return
        if self._shared is not None:
            async with self._shared_slot(
                self._shared, quota, tenant, request_id, timeout, limit=limit
            ):
                yield
            return
        key = (quota, tenant)
        self._in_flight[key] += 1
        try:
            in_flight = self._in_flight[key]
            used = await self._usage(quota, tenant, request_id, timeout)
            if used + in_flight > limit:
                self._on_refused(tenant)
                raise self._exceeded(quota, tenant, limit)
            yield
        finally:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]

    @asynccontextmanager
    async def _shared_slot(
        self,
        shared: SharedReservations,
        quota: Quota,
        tenant: str,
        request_id: str,
        timeout: float | None,
        *,
        limit: int,
    ) -> AsyncIterator[None]:
        hold = timeout + _HOLD_MARGIN_SECONDS if timeout is not None else DEFAULT_HOLD_SECONDS
        reservation = await shared.reserve(
            tenant,
            quota.value,
            limit,
            lambda: self._usage(quota, tenant, request_id, timeout),
            hold_seconds=hold,
        )
        if reservation is None:
            self._on_refused(tenant)
            raise self._exceeded(quota, tenant, limit)
        try:
            yield
        finally:
            await asyncio.shield(shared.release(reservation))

    def _limit(self, quota: Quota, tenant: str) -> int | None:
        limits = self._limits.for_tenant(tenant)
        if quota is Quota.ENVIRONMENTS:
            return limits.max_environments
        return limits.max_concurrent_experiments

    def _exceeded(self, quota: Quota, tenant: str, limit: int) -> ServiceError:
        what = (
            "live environments" if quota is Quota.ENVIRONMENTS else "queued or running experiments"
        )
        action = (
            "delete an environment"
            if quota is Quota.ENVIRONMENTS
            else "wait for an experiment to finish or cancel one"
        )
        return ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            ErrorReason.QUOTA_EXCEEDED,
            f"tenant {tenant} already has {limit} {what}, its quota; {action} and retry",
            quota_violations=[(f"tenant:{tenant}/{quota.value}", f"at most {limit} {what}")],
            retry_after=spread(self._limits.quota_retry_after_seconds),
            metadata={"tenant": tenant, "quota": quota.value, "limit": str(limit)},
        )

    async def _count(
        self, quota: Quota, tenant: str, request_id: str, timeout: float | None
    ) -> int:
        counts = await asyncio.gather(
            *(
                self._count_on(link, quota, tenant, request_id, timeout)
                for link in self._pool.available()
            )
        )
        return sum(counts)

    async def _count_on(
        self,
        link: OrchestratorLink,
        quota: Quota,
        tenant: str,
        request_id: str,
        timeout: float | None,
    ) -> int:
        try:
            raw = await link.unary(_GET_TENANT_USAGE)(
                _USAGE_REQUEST,
                timeout=timeout,
                metadata=call_metadata(link, tenant, request_id),
            )
        except grpc.aio.AioRpcError as error:
            # Quotas are a guard rail: an orchestrator that cannot be counted now
            # must not block creates on the others.
            log.warning(
                "orchestrator=%s quota count failed: %s; not counted",
                link.id,
                error.code().name,
            )
            return 0
        return _used(quota, orchestrator_service_pb2.GetTenantUsageResponse.FromString(raw))


def _used(quota: Quota, usage: orchestrator_service_pb2.GetTenantUsageResponse) -> int:
    """What of an orchestrator's usage counts against ``quota`` (a negative count, which
    no orchestrator should send, counts as none rather than freeing others' slots)."""
    if quota is Quota.ENVIRONMENTS:
        return max(0, usage.environments_live)
    return max(0, usage.experiments_queued) + max(0, usage.experiments_running)
