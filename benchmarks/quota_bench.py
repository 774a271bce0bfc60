"""The gateway's quota check: its cost for a tenant with many live resources and for one with none.

A real OrchestratorApp runs in this process behind an in-process link, as in
``sandbox-sdk serve``. Tenant ``busy`` has BUSY_ENVIRONMENTS live environments and
BUSY_EXPERIMENTS queued experiments (one slot, a slow model: they stay queued);
tenant ``idle`` has nothing. Each round times the gateway's QuotaEnforcer admitting
a create for each tenant and each quota, interleaved, so both see the same load:

* GetTenantUsage (the counters): ``busy`` over ``idle``, the goal being a flat cost;
* the count as it was before issue #16, paging through ListEnvironments and
  ListExperiments, for ``busy``, over GetTenantUsage for ``busy``: what the
  counters save a create.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sandbox_sdk.api.v1 import environment_pb2, experiment_pb2, requests_pb2
from sandbox_sdk.server.gateway.config import LimitsConfig, OrchestratorEndpoint, TenantLimits
from sandbox_sdk.server.gateway.in_process import InProcessLink
from sandbox_sdk.server.gateway.methods import Quota
from sandbox_sdk.server.gateway.orchestrators import OrchestratorPool, call_metadata
from sandbox_sdk.server.gateway.quotas import QuotaEnforcer, UsageCounter
from sandbox_sdk.server.orchestrator.app import OrchestratorApp
from sandbox_sdk.server.orchestrator.config import OrchestratorConfig
from sandbox_sdk.server.tenancy import TENANT_KEY

BUSY_ENVIRONMENTS = 16
BUSY_EXPERIMENTS = 3000
ROUNDS = 5
CHECKS_PER_ROUND = 10
GOAL_RATIO = 1.5
SERVICE = "/sandbox.v1.OrchestratorService/"
ACTIVE = (experiment_pb2.EXPERIMENT_STATE_QUEUED, experiment_pb2.EXPERIMENT_STATE_RUNNING)
UNLIMITED = LimitsConfig(
    default=TenantLimits(max_environments=10**9, max_concurrent_experiments=10**9)
)


def _listing_counter(pool: OrchestratorPool) -> UsageCounter:
    """The quota count before #16: every live resource listed, 1,000 a page."""

    async def count(quota: Quota, tenant: str, request_id: str, timeout: float | None) -> int:
        total = 0
        for link in pool.available():
            metadata = call_metadata(link, tenant, request_id)
            token = ""
            while True:
                page: Any
                if quota is Quota.ENVIRONMENTS:
                    request = requests_pb2.ListEnvironmentsRequest(page_size=1000, page_token=token)
                    raw = await link.unary(SERVICE + "ListEnvironments")(
                        request.SerializeToString(), timeout=timeout, metadata=metadata
                    )
                    page = requests_pb2.ListEnvironmentsResponse.FromString(raw)
                    total += len(page.environments)
                else:
                    listing = requests_pb2.ListExperimentsRequest(
                        page_size=1000, page_token=token, states=ACTIVE
                    )
                    raw = await link.unary(SERVICE + "ListExperiments")(
                        listing.SerializeToString(), timeout=timeout, metadata=metadata
                    )
                    page = requests_pb2.ListExperimentsResponse.FromString(raw)
                    total += len(page.experiments)
                token = page.next_page_token
                if not token:
                    break
        return total

    return count


async def _check_seconds(enforcer: QuotaEnforcer, quota: Quota, tenant: str) -> float:
    started = time.perf_counter()
    async with enforcer.reserve(quota, tenant, "", 30.0):
        pass
    return time.perf_counter() - started


async def _fill(call: Callable[[str, Any], Awaitable[bytes]]) -> None:
    """BUSY_ENVIRONMENTS small environments and BUSY_EXPERIMENTS queued experiments."""
    spec = environment_pb2.EnvironmentSpec()
    spec.limits.memory_bytes = 64 << 20
    spec.limits.cpu_cores = 0.05
    environment_ids = []
    for _ in range(BUSY_ENVIRONMENTS):
        raw = await call("CreateEnvironment", requests_pb2.CreateEnvironmentRequest(spec=spec))
        environment_ids.append(
            requests_pb2.CreateEnvironmentResponse.FromString(raw).environment.id
        )
    experiment = experiment_pb2.ExperimentSpec(
        model="slow", inputs=[experiment_pb2.ExperimentInput(prompt="one two three")]
    )
    for _ in range(BUSY_EXPERIMENTS):
        await call(
            "CreateExperiment",
            requests_pb2.CreateExperimentRequest(
                environment_id=environment_ids[0], spec=experiment
            ),
        )


async def _measure(app: OrchestratorApp) -> dict[tuple[str, Quota], list[float]]:
    link = InProcessLink("qbench", app.address, app.handlers())

    async def call(method: str, request: Any) -> bytes:
        return await link.unary(SERVICE + method)(
            request.SerializeToString(), timeout=60, metadata=((TENANT_KEY, "busy"),)
        )

    await _fill(call)
    pool = OrchestratorPool(
        [OrchestratorEndpoint(id=link.id, address=link.address)],
        internal_token=None,
        in_process=[link],
    )
    await pool.start()
    try:
        counters = QuotaEnforcer(pool, UNLIMITED)
        listings = QuotaEnforcer(pool, UNLIMITED, usage=_listing_counter(pool))
        paths = {"busy": counters, "idle": counters, "busy, listing": listings}
        samples: dict[tuple[str, Quota], list[float]] = {(p, q): [] for p in paths for q in Quota}
        for _ in range(ROUNDS):
            for (path, quota), kept in samples.items():
                tenant = path.split(",")[0]
                for _ in range(CHECKS_PER_ROUND):
                    kept.append(await _check_seconds(paths[path], quota, tenant))
        return samples
    finally:
        await pool.stop()


async def _run_orchestrator(data_dir: Path) -> dict[tuple[str, Quota], list[float]]:
    config = OrchestratorConfig.model_validate(
        {
            "orchestrator_id": "qbench",
            "data_dir": data_dir,
            "internal_token": secrets.token_urlsafe(32),
            "experiments": {
                "models": [
                    {"name": "slow", "provider": "scripted", "options": {"chunk_delay_seconds": 60}}
                ],
                "scheduler": {"max_concurrent": 1, "max_queue_length": BUSY_EXPERIMENTS + 10},
            },
        }
    )
    app = await OrchestratorApp.start(config, "127.0.0.1:0")
    try:
        return await _measure(app)
    finally:
        await app.stop(0)


def _row(metric: str, value: list[float], baseline: list[float], goal: str) -> dict[str, Any]:
    p50, base = statistics.median(value) * 1e3, statistics.median(baseline) * 1e3
    return {
        "benchmark": "quota_bench",
        "metric": metric,
        "value": p50,
        "baseline": base,
        "ratio": p50 / base,
        "unit": "ms p50",
        "goal": goal,
    }


def run() -> list[dict[str, Any]]:
    """Per quota: the check for a busy tenant over an idle one, and the old listing count
    over the counters."""
    with tempfile.TemporaryDirectory(prefix="quota-bench-") as data_dir:
        samples = asyncio.run(_run_orchestrator(Path(data_dir)))
    rows = []
    for quota, has in (
        (Quota.ENVIRONMENTS, f"{BUSY_ENVIRONMENTS} live environments"),
        (Quota.EXPERIMENTS, f"{BUSY_EXPERIMENTS:,} queued experiments"),
    ):
        rows.append(
            _row(
                f"{quota.value} quota check with {has} (baseline: none)",
                samples[("busy", quota)],
                samples[("idle", quota)],
                f"ratio <= {GOAL_RATIO}",
            )
        )
        rows.append(
            _row(
                f"{quota.value} quota check with {has} by listing, as before #16"
                " (baseline: counters)",
                samples[("busy, listing", quota)],
                samples[("busy", quota)],
                "report",
            )
        )
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import print_table

    print_table(run())
