"""Quota usage is read from the orchestrators' counters: GetTenantUsage, once per orchestrator.

The orchestrators here are real OrchestratorApps (bubblewrap sandboxes, SQLite), reached
as the embedded server reaches its own: through an in-process link, whose handlers this
file wraps only to count the calls they get.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.protobuf.message_factory import GetMessageClass
from query_plans import QueryRecorder, query_plan

from sandbox_sdk.api.v1 import (
    environment_pb2,
    experiment_pb2,
    orchestrator_service_pb2,
    requests_pb2,
)
from sandbox_sdk.server.gateway.config import (
    LimitsConfig,
    OrchestratorEndpoint,
    TenantLimits,
)
from sandbox_sdk.server.gateway.in_process import InProcessLink
from sandbox_sdk.server.gateway.methods import Quota
from sandbox_sdk.server.gateway.orchestrators import OrchestratorPool
from sandbox_sdk.server.gateway.quotas import QuotaEnforcer
from sandbox_sdk.server.orchestrator.app import OrchestratorApp
from sandbox_sdk.server.orchestrator.config import OrchestratorConfig
from sandbox_sdk.server.orchestrator.servicer import SERVICE, RpcHandler
from sandbox_sdk.server.status import ServiceError
from sandbox_sdk.server.tenancy import TENANT_KEY

PATH = f"/{SERVICE.full_name}/"
ACTIVE = (experiment_pb2.EXPERIMENT_STATE_QUEUED, experiment_pb2.EXPERIMENT_STATE_RUNNING)
# One running experiment at a time, each slow: the others stay queued while a test looks.
EXPERIMENTS = {
    "models": [{"name": "slow", "provider": "scripted", "options": {"chunk_delay_seconds": 1.0}}],
    "scheduler": {"max_concurrent": 1},
}
SLOW_SPEC = experiment_pb2.ExperimentSpec(
    model="slow",
    inputs=[experiment_pb2.ExperimentInput(prompt=" ".join(f"w{i}" for i in range(400)))],
)


@dataclass
class Orchestrator:
    """A real orchestrator and a link to it whose unary calls are counted."""

    app: OrchestratorApp
    link: InProcessLink
    calls: Counter[str]
    running: list[OrchestratorApp]

    async def stop(self) -> None:
        """Stops it as a shutdown does."""
        self.running.remove(self.app)
        await self.app.stop(0)

    async def call(self, method: str, request: Any, tenant: str) -> Any:
        """One unary call as the gateway makes it, for ``tenant``; the parsed response."""
        raw = await self.link.unary(PATH + method)(
            request.SerializeToString(), timeout=60, metadata=((TENANT_KEY, tenant),)
        )
        response_type = GetMessageClass(SERVICE.methods_by_name[method].output_type)
        return response_type.FromString(raw)

    async def usage(self, tenant: str) -> orchestrator_service_pb2.GetTenantUsageResponse:
        usage: orchestrator_service_pb2.GetTenantUsageResponse = await self.call(
            "GetTenantUsage", orchestrator_service_pb2.GetTenantUsageRequest(), tenant
        )
        return usage

    async def listed(self, tenant: str) -> tuple[int, int]:
        """The tenant's live environments and active experiments, counted by listing them."""
        environments = await self.call(
            "ListEnvironments", requests_pb2.ListEnvironmentsRequest(page_size=1000), tenant
        )
        experiments = await self.call(
            "ListExperiments",
            requests_pb2.ListExperimentsRequest(page_size=1000, states=ACTIVE),
            tenant,
        )
        assert not environments.next_page_token
        assert not experiments.next_page_token
        return len(environments.environments), len(experiments.experiments)

    async def create_environment(self, tenant: str, ttl_seconds: int = 600) -> str:
        spec = environment_pb2.EnvironmentSpec(ttl=duration_pb2.Duration(seconds=ttl_seconds))
        created = await self.call(
            "CreateEnvironment", requests_pb2.CreateEnvironmentRequest(spec=spec), tenant
        )
        return str(created.environment.id)

    async def create_experiment(self, tenant: str, environment_id: str) -> str:
        request = requests_pb2.CreateExperimentRequest(
            environment_id=environment_id, spec=SLOW_SPEC
        )
        return str((await self.call("CreateExperiment", request, tenant)).experiment.id)


def _counted(handlers: dict[str, RpcHandler], calls: Counter[str]) -> dict[str, RpcHandler]:
    """The handlers, the unary ones counting their calls in ``calls``."""

    def counting(name: str, handler: RpcHandler) -> RpcHandler:
        async def counted(request: Any, context: Any) -> Any:
            calls[name] += 1
            return await handler(request, context)

        return counted

    unary = {m.name for m in SERVICE.methods if not (m.client_streaming or m.server_streaming)}
    return {n: counting(n, h) if n in unary else h for n, h in handlers.items()}


def _config(data_dir: Path, orchestrator_id: str) -> OrchestratorConfig:
    return OrchestratorConfig.model_validate(
        {
            "orchestrator_id": orchestrator_id,
            "data_dir": data_dir / orchestrator_id,
            "internal_token": secrets.token_urlsafe(32),
            "experiments": EXPERIMENTS,
        }
    )


StartOrchestrator = Callable[[str], Awaitable[Orchestrator]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[StartOrchestrator]:
    """Starts real orchestrators (again, on the same data, for a restart); stops the ones
    still running at the end."""
    running: list[OrchestratorApp] = []

    async def start_one(orchestrator_id: str) -> Orchestrator:
        app = await OrchestratorApp.start(_config(tmp_path, orchestrator_id), "127.0.0.1:0")
        running.append(app)
        calls: Counter[str] = Counter()
        link = InProcessLink(orchestrator_id, app.address, _counted(app.handlers(), calls))
        return Orchestrator(app, link, calls, running)

    yield start_one
    for app in running:
        await app.stop(0)


async def _pool(*orchestrators: Orchestrator) -> OrchestratorPool:
    pool = OrchestratorPool(
        [OrchestratorEndpoint(id=o.link.id, address=o.link.address) for o in orchestrators],
        internal_token=None,
        in_process=[o.link for o in orchestrators],
    )
    await pool.start()
    return pool


async def _admitted(enforcer: QuotaEnforcer, quota: Quota, tenant: str) -> bool:
    try:
        async with enforcer.reserve(quota, tenant, "", 30.0):
            return True
    except ServiceError:
        return False


async def _each_check_is_one_usage_call(enforcer: QuotaEnforcer, *on: Orchestrator) -> None:
    for quota in Quota:
        for orchestrator in on:
            orchestrator.calls.clear()
        assert await _admitted(enforcer, quota, "team-a")
        # One counter read per orchestrator per check, and no listing.
        for orchestrator in on:
            assert orchestrator.calls == Counter({"GetTenantUsage": 1}), quota


async def test_a_quota_check_is_one_usage_call_per_orchestrator_whatever_the_tenant_has(
    start: StartOrchestrator,
) -> None:
    o1, o2 = await start("qa"), await start("qb")
    pool = await _pool(o1, o2)
    try:
        limits = TenantLimits(max_environments=4, max_concurrent_experiments=4)
        enforcer = QuotaEnforcer(pool, LimitsConfig(default=limits))
        await _each_check_is_one_usage_call(enforcer, o1, o2)
        # 2 + 1 environments, and 1 running + 2 queued experiments: still one call each.
        first = await o1.create_environment("team-a")
        await o1.create_environment("team-a")
        await o2.create_environment("team-a")
        for _ in range(3):
            await o1.create_experiment("team-a", first)
        await _each_check_is_one_usage_call(enforcer, o1, o2)

        # The counts add up across orchestrators: 3 of 4 used, one more fits, not two.
        for quota in Quota:
            assert await _admitted(enforcer, quota, "team-a")
            async with enforcer.reserve(quota, "team-a", "", 30.0):
                # The create in flight counts too.
                assert not await _admitted(enforcer, quota, "team-a"), quota
            assert await _admitted(enforcer, quota, "team-b"), "another tenant's quota is its own"
    finally:
        await pool.stop()


async def test_a_usage_call_reads_one_counter_row_each_through_its_primary_key(
    start: StartOrchestrator,
) -> None:
    orchestrator = await start("qa")
    environment_id = await orchestrator.create_environment("team-a")
    await orchestrator.create_experiment("team-a", environment_id)
    database = orchestrator.app.database
    recorder = QueryRecorder(database)

    usage = await orchestrator.usage("team-a")

    assert (usage.environments_live, usage.experiments_queued + usage.experiments_running) == (1, 1)
    reads = [(sql, params) for sql, params in recorder.queries if "tenant" in sql]
    assert len(reads) == 2, reads
    plans = sorted(query_plan(database, sql, params) for sql, params in reads)
    assert plans == [
        "SEARCH env_tenant_live USING PRIMARY KEY (tenant=?)",
        "SEARCH exp_tenant_live USING PRIMARY KEY (tenant=?)",
    ]


async def _until(condition: Callable[[], Awaitable[bool]], limit: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.1)


async def _agree(orchestrator: Orchestrator, tenant: str) -> tuple[int, int]:
    """The tenant's counts, once the counters and the listings say the same."""
    usage = await orchestrator.usage(tenant)
    counted = (usage.environments_live, usage.experiments_queued + usage.experiments_running)
    assert counted == await orchestrator.listed(tenant), tenant
    return counted


async def test_the_counters_agree_with_listings_through_creates_deletes_expiry_and_restart(
    start: StartOrchestrator,
) -> None:
    orchestrator = await start("qa")
    assert await _agree(orchestrator, "team-a") == (0, 0)

    kept = await orchestrator.create_environment("team-a")
    deleted = await orchestrator.create_environment("team-a")
    expiring = await orchestrator.create_environment("team-a", ttl_seconds=1)
    await orchestrator.create_environment("team-b")
    experiments = [await orchestrator.create_experiment("team-a", kept) for _ in range(3)]
    await orchestrator.create_experiment("team-a", deleted)
    assert await _agree(orchestrator, "team-a") == (3, 4)
    assert await _agree(orchestrator, "team-b") == (1, 0)

    await orchestrator.call(
        "DeleteEnvironment", requests_pb2.DeleteEnvironmentRequest(environment_id=deleted), "team-a"
    )
    await orchestrator.call(
        "CancelExperiment",
        requests_pb2.CancelExperimentRequest(experiment_id=experiments[0]),
        "team-a",
    )
    # The deleted environment's experiment ended with it.
    assert await _agree(orchestrator, "team-a") == (2, 2)

    async def expired() -> bool:
        got = await orchestrator.call(
            "GetEnvironment", requests_pb2.GetEnvironmentRequest(environment_id=expiring), "team-a"
        )
        return bool(got.environment.state == environment_pb2.ENVIRONMENT_STATE_TERMINATED)

    await _until(expired)
    assert await _agree(orchestrator, "team-a") == (1, 2)

    # A start recounts from the rows, even counters that went wrong while it was down
    # (environments do not outlive their orchestrator; experiments end as the start says).
    await orchestrator.stop()
    _spoil_counters(orchestrator.app.config.database_path)
    restarted = await start("qa")
    assert (await _agree(restarted, "team-a"))[0] == 0
    assert await _agree(restarted, "team-b") == (0, 0)
    assert await _agree(restarted, "team-c") == (0, 0)
    await restarted.create_environment("team-a")
    assert (await _agree(restarted, "team-a"))[0] == 1


def _spoil_counters(database: Path) -> None:
    """Counters that disagree with the rows, as a hand-edited database would have."""
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("UPDATE env_tenant_live SET live = live + 7")
        connection.execute("UPDATE exp_tenant_live SET queued = queued + 7, running = -1")
        connection.execute("INSERT INTO env_tenant_live (tenant, live) VALUES ('team-c', 5)")
        connection.execute(
            "INSERT INTO exp_tenant_live (tenant, queued, running) VALUES ('team-c', 5, 5)"
        )


async def test_a_tenant_gets_only_its_own_usage_whatever_its_request_says(
    start: StartOrchestrator,
) -> None:
    orchestrator = await start("qa")
    await orchestrator.create_environment("victim")
    await orchestrator.create_environment("victim")
    app = orchestrator.app
    token = app.config.internal_token
    path = PATH + "GetTenantUsage"
    # The request has no fields; a body smuggling "victim" in field 1 (or any other) is
    # an unknown field to the orchestrator, and the tenant stays the metadata's.
    smuggled = b"\x0a\x06victim" + b"\x12\x06victim"
    async with grpc.aio.insecure_channel(app.address) as channel:
        call = channel.unary_unary(path, None, None)
        authorized = (("authorization", f"Bearer {token}"), (TENANT_KEY, "attacker"))
        for body in (b"", smuggled):
            raw = await call(body, metadata=authorized, timeout=10)
            usage = orchestrator_service_pb2.GetTenantUsageResponse.FromString(raw)
            assert usage.environments_live == 0, body

        # Without the gateway's internal token, nobody names a tenant at all.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"", metadata=((TENANT_KEY, "victim"),), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    raw = await orchestrator.link.unary(path)(smuggled, metadata=((TENANT_KEY, "attacker"),))
    assert orchestrator_service_pb2.GetTenantUsageResponse.FromString(raw).environments_live == 0
    assert (await orchestrator.usage("victim")).environments_live == 2
