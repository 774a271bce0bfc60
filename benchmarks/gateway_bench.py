"""Latency the gateway adds: GetEnvironment via the gateway vs straight to the orchestrator.

The server runs as ``sandbox-sdk serve`` does (a gateway and the real
OrchestratorApp in one process, on loopback), in a child process; this
process is the client. The two paths are called alternately, one call at a
time, so both see the same machine load. The client sends the orchestrator
what the gateway would (tenant header and internal token), so the baseline
does the orchestrator's full work.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from sandbox.v1 import gateway_service_pb2_grpc, orchestrator_service_pb2_grpc, requests_pb2

WARMUP_CALLS = 300
MEASURED_CALLS = 3000
GOAL_RATIO = 1.6


def _serve(data_dir: str, conn: Connection) -> None:
    """Child process: runs the embedded server until the parent closes the pipe."""
    from sandbox_sdk.server.embedded import run_embedded

    async def main() -> None:
        server = await run_embedded("127.0.0.1", 0, data_dir)
        conn.send(
            {
                "gateway": f"127.0.0.1:{server.port}",
                "orchestrator": server.orchestrator.address,
                "internal_token": server.orchestrator.config.internal_token,
                "admin_key": server.admin_key_path.read_text().strip(),
            }
        )
        try:
            # Returns (or raises EOFError) when the parent closes its end.
            await asyncio.get_running_loop().run_in_executor(None, conn.recv_bytes)
        except EOFError:
            pass
        finally:
            await server.stop(1.0)

    asyncio.run(main())


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _measure(endpoints: dict[str, str]) -> tuple[list[float], list[float]]:
    gateway_channel = grpc.aio.insecure_channel(endpoints["gateway"])
    direct_channel = grpc.aio.insecure_channel(endpoints["orchestrator"])
    try:
        gateway = gateway_service_pb2_grpc.GatewayServiceStub(gateway_channel)
        direct = orchestrator_service_pb2_grpc.OrchestratorServiceStub(direct_channel)
        user = (("authorization", f"Bearer {endpoints['admin_key']}"),)
        internal = (
            ("authorization", f"Bearer {endpoints['internal_token']}"),
            ("x-sandbox-tenant", "default"),
        )
        created = await gateway.CreateEnvironment(
            requests_pb2.CreateEnvironmentRequest(), metadata=user, timeout=60
        )
        request = requests_pb2.GetEnvironmentRequest(environment_id=created.environment.id)
        via_gateway: list[float] = []
        straight: list[float] = []
        for index in range(WARMUP_CALLS + MEASURED_CALLS):
            started = time.perf_counter()
            await direct.GetEnvironment(request, metadata=internal, timeout=10)
            middle = time.perf_counter()
            await gateway.GetEnvironment(request, metadata=user, timeout=10)
            ended = time.perf_counter()
            if index >= WARMUP_CALLS:
                straight.append(middle - started)
                via_gateway.append(ended - middle)
        await gateway.DeleteEnvironment(
            requests_pb2.DeleteEnvironmentRequest(environment_id=created.environment.id),
            metadata=user,
            timeout=60,
        )
        return via_gateway, straight
    finally:
        await gateway_channel.close()
        await direct_channel.close()


def run() -> list[dict[str, Any]]:
    """p50 and p99 of GetEnvironment via the gateway, against straight to the orchestrator."""
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as data_dir:
        parent, child = context.Pipe()
        server = context.Process(target=_serve, args=(str(Path(data_dir)), child), daemon=True)
        server.start()
        try:
            if not parent.poll(120):
                raise RuntimeError("the embedded server did not start within 120 s")
            endpoints = parent.recv()
            via_gateway, straight = asyncio.run(_measure(endpoints))
        finally:
            parent.close()
            server.join(30)
            if server.is_alive():
                server.kill()
    rows = []
    for name, fraction in (("p50", 0.5), ("p99", 0.99)):
        value = _percentile(via_gateway, fraction) * 1e3
        baseline = _percentile(straight, fraction) * 1e3
        rows.append(
            {
                "benchmark": "gateway_bench",
                "metric": f"GetEnvironment {name} via gateway (embedded, real orchestrator)",
                "value": value,
                "baseline": baseline,
                "ratio": value / baseline,
                "unit": "ms",
                "goal": f"ratio < {GOAL_RATIO}" if name == "p50" else "report",
            }
        )
    rows.append(
        {
            "benchmark": "gateway_bench",
            "metric": "GetEnvironment mean via gateway",
            "value": statistics.fmean(via_gateway) * 1e3,
            "baseline": statistics.fmean(straight) * 1e3,
            "ratio": statistics.fmean(via_gateway) / statistics.fmean(straight),
            "unit": "ms",
            "goal": "report",
        }
    )
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import print_table

    print_table(run())
