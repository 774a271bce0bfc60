"""Scaling out: creates and execs per second with 1 and 3 orchestrators behind 2 gateways,
and the unary cost of a gateway whose API keys live in PostgreSQL.

Each cluster is :class:`~sandbox_sdk.server.cluster.LocalCluster`: real PostgreSQL,
Redis, 2 gateways and N orchestrators as processes on loopback. The client is the SDK's
asyncio client over both gateways (round robin), with ``CONCURRENCY`` calls in flight.
The 1-orchestrator cluster is the baseline of the 3-orchestrator one; on a 2-core
machine the servers, PostgreSQL and the client share the same two cores, so the ratio
shows the machine's limit rather than the design's.

The gateway rows call GetEnvironment one at a time, interleaved, through three gateways
in front of the same orchestrator: one with the API keys in PostgreSQL (cached after the
first call), one with the embedded SQLite key store (the baseline of the first), and the
cluster's own, which also follows the registry and takes each call's rate-limit token
from Redis (its baseline: the PostgreSQL one, without Redis).
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

import grpc
import yaml

from sandbox_sdk import AsyncSandboxClient
from sandbox_sdk.api.v1 import gateway_service_pb2_grpc, requests_pb2
from sandbox_sdk.server.cluster.local_cluster import LocalCluster, ServerProcess, health_serving
from sandbox_sdk.server.cluster.postgres import free_port

CONCURRENCY = 6
CREATES = 36
EXECS = 120
AUTH_WARMUP_CALLS = 200
AUTH_MEASURED_CALLS = 2000
START_SECONDS = 60.0


def _cpu_ticks() -> tuple[int, int]:
    """The machine's (busy, total) CPU ticks since boot, all cores, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


async def _throughput(
    count: int, operation: Callable[[int], Awaitable[None]]
) -> tuple[float, float]:
    """Runs ``operation(i)`` for ``count`` indexes, CONCURRENCY at a time.

    Returns the operations per second and the fraction of the machine's CPU time
    that was busy meanwhile (1.0: every core saturated).
    """
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)

    async def worker() -> None:
        while not queue.empty():
            await operation(queue.get_nowait())

    started, (busy_before, total_before) = time.perf_counter(), _cpu_ticks()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    busy_after, total_after = _cpu_ticks()
    return count / elapsed, (busy_after - busy_before) / max(1, total_after - total_before)


async def _creates_and_execs(cluster: LocalCluster) -> dict[str, float]:
    async with AsyncSandboxClient(target=cluster.target, api_key=cluster.admin_key) as client:
        created: list[Any] = []

        async def create(_: int) -> None:
            # Small limits: 36 live environments fit one node's tenant share of cores.
            created.append(await client.create_environment(cpu=0.1, memory="64Mi", disk="32Mi"))

        creates_per_second, creates_busy = await _throughput(CREATES, create)
        owners = {sandbox.id.split("-")[1] for sandbox in created}

        async def execute(index: int) -> None:
            sandbox = created[index % len(created)]
            result = await sandbox.exec(["true"])
            assert result.exit_code == 0

        execs_per_second, execs_busy = await _throughput(EXECS, execute)
        await asyncio.gather(*(sandbox.delete() for sandbox in created))
    return {
        "creates": creates_per_second,
        "creates_busy": creates_busy,
        "execs": execs_per_second,
        "execs_busy": execs_busy,
        "orchestrators_used": float(len(owners)),
    }


def _scaling(directory: Path) -> dict[int, dict[str, float]]:
    measured = {}
    for orchestrators in (1, 3):
        with LocalCluster(gateways=2, orchestrators=orchestrators, directory=directory) as cluster:
            asyncio.run(_creates_and_execs(cluster))  # warm-up: interpreters, caches, pools
            measured[orchestrators] = asyncio.run(_creates_and_execs(cluster))
    return measured


def _extra_gateway(cluster: LocalCluster, name: str, settings: dict[str, Any]) -> ServerProcess:
    """One more gateway in front of the cluster's o1, with ``settings`` over the basics."""
    home = cluster.directory
    assert home is not None
    (home / name).mkdir(mode=0o700)
    server = ServerProcess(
        name, "gateway", f"127.0.0.1:{free_port()}", home / f"{name}.yaml", home / f"{name}.log"
    )
    section = {
        "listen": server.address,
        "orchestrators": [{"id": "o1", "address": cluster.orchestrators[0].address}],
        "internal_token": cluster.internal_token,
        "db_path": str(home / name / "gateway.db"),
        "admin_key_path": str(home / name / "admin.key"),
        **settings,
    }
    server.config_path.write_text(yaml.safe_dump({"gateway": section}))
    server.config_path.chmod(0o600)
    server.start()
    deadline = time.monotonic() + START_SECONDS
    while not health_serving(server.address):
        if not server.running or time.monotonic() > deadline:
            raise RuntimeError(f"gateway {name} did not start:\n" + server.log_tail())
        time.sleep(0.1)
    return server


async def _interleaved_latencies(targets: list[tuple[str, str]]) -> list[list[float]]:
    """GetEnvironment through each (address, key) in turn; the seconds of each call."""
    channels = [grpc.aio.insecure_channel(address) for address, _ in targets]
    stubs = [gateway_service_pb2_grpc.GatewayServiceStub(channel) for channel in channels]
    metadata = [(("authorization", f"Bearer {key}"),) for _, key in targets]
    try:
        # Every gateway reaches o1; an environment o1 owns is readable through each.
        created = await stubs[0].CreateEnvironment(
            requests_pb2.CreateEnvironmentRequest(request_id=secrets.token_hex(8)),
            metadata=metadata[0],
            timeout=60,
        )
        request = requests_pb2.GetEnvironmentRequest(environment_id=created.environment.id)
        samples: list[list[float]] = [[] for _ in targets]
        for index in range(AUTH_WARMUP_CALLS + AUTH_MEASURED_CALLS):
            for stub, call_metadata, kept in zip(stubs, metadata, samples, strict=True):
                started = time.perf_counter()
                await stub.GetEnvironment(request, metadata=call_metadata, timeout=10)
                if index >= AUTH_WARMUP_CALLS:
                    kept.append(time.perf_counter() - started)
        await stubs[0].DeleteEnvironment(
            requests_pb2.DeleteEnvironmentRequest(environment_id=created.environment.id),
            metadata=metadata[0],
            timeout=60,
        )
        return samples
    finally:
        for channel in channels:
            await channel.close()


# The gateways compared, all in front of o1; the cluster's own gateway (g1) has
# PostgreSQL keys, the registry and Redis (shared rate limits and revocations).
SHARED_STORE_WITHOUT_REDIS = "postgres-gateway"
EMBEDDED = "sqlite-gateway"


def _gateway_costs(directory: Path) -> dict[str, list[float]]:
    with LocalCluster(gateways=1, orchestrators=1, directory=directory) as cluster:
        extra = {
            SHARED_STORE_WITHOUT_REDIS: {
                "database_url": cluster.database_url,
                "admin_key_path": str(cluster.admin_key_path),
            },
            EMBEDDED: {},
        }
        servers = [_extra_gateway(cluster, name, settings) for name, settings in extra.items()]
        try:
            targets = [(cluster.gateway_addresses[0], cluster.admin_key)]
            # The SQLite gateway's operator key is its own; every key here is the
            # operator's, of tenant "default", so each call does the same work.
            targets += [(servers[0].address, cluster.admin_key)]
            key_file = servers[1].config_path.parent / EMBEDDED / "admin.key"
            targets += [(servers[1].address, key_file.read_text().strip())]
            redis, postgres, sqlite = asyncio.run(_interleaved_latencies(targets))
            return {"redis": redis, "postgres": postgres, "sqlite": sqlite}
        finally:
            for server in servers:
                server.send_signal(15)
                server.wait()


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


def run() -> list[dict[str, Any]]:
    """Creates/s and execs/s, 3 vs 1 orchestrators; GetEnvironment p50, PostgreSQL vs SQLite."""
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as scratch:
        directory = Path(scratch)
        scaling = _scaling(directory)
        costs = _gateway_costs(directory)
    rows = []
    for operation, count in (("creates", CREATES), ("execs", EXECS)):
        value, baseline = scaling[3][operation], scaling[1][operation]
        rows.append(
            {
                "benchmark": "cluster_bench",
                "metric": f"{operation}/s, 2 gateways + 3 orchestrators (baseline: 1);"
                f" {count} calls, {CONCURRENCY} in flight, orchestrators used:"
                f" {scaling[3]['orchestrators_used']:.0f}; machine CPU busy"
                f" {scaling[1][operation + '_busy']:.0%} with 1,"
                f" {scaling[3][operation + '_busy']:.0%} with 3",
                "value": value,
                "baseline": baseline,
                "ratio": value / baseline,
                "unit": "per s",
                "goal": "ratio >= 2.5 CPU permitting (2 cores here: report)",
            }
        )
    comparisons = (
        (
            "postgres",
            "sqlite",
            "gateway with PostgreSQL keys (cached) and a static list (baseline: SQLite keys)",
            "ratio <= 1.1",
        ),
        (
            "redis",
            "postgres",
            "gateway with PostgreSQL keys, the registry and Redis rate limits (baseline: the"
            " same without Redis)",
            "report",
        ),
    )
    for measured, base, what, goal in comparisons:
        for name, pick in (("p50", _median), ("mean", statistics.fmean)):
            value, baseline = pick(costs[measured]) * 1e3, pick(costs[base]) * 1e3
            rows.append(
                {
                    "benchmark": "cluster_bench",
                    "metric": f"GetEnvironment {name}, {what}",
                    "value": value,
                    "baseline": baseline,
                    "ratio": value / baseline,
                    "unit": "ms",
                    "goal": goal if name == "p50" else "report",
                }
            )
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import print_table

    print_table(run())
