"""Latency the gateway adds: GetEnvironment via the gateway vs straight to the orchestrator.

Two servers run as ``sandbox-sdk serve`` does (a gateway and the real
OrchestratorApp in one process), each in its own child process: one with the
default in-process link between gateway and orchestrator, one with
``in_process=False`` (a loopback gRPC hop, as between separate processes).
This process is the client. Each iteration calls, one call at a time, each
server's orchestrator straight and through its gateway, so every path sees
the same machine load; each gateway is compared with its own orchestrator.
The client sends the orchestrator what the gateway would (tenant header and
internal token), so the baseline does the orchestrator's full work.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from bench_common import serve_in_child

from sandbox_sdk.api.v1 import gateway_service_pb2_grpc, orchestrator_service_pb2_grpc, requests_pb2

WARMUP_CALLS = 300
MEASURED_CALLS = 3000
GOAL_RATIO = 1.6


MODES = {
    "in-process": "embedded, in-process link",
    "grpc": "embedded, in_process=False: loopback gRPC hop",
}


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class _Target:
    """One server: stubs for its gateway and its orchestrator, and the samples taken."""

    gateway: gateway_service_pb2_grpc.GatewayServiceStub
    direct: orchestrator_service_pb2_grpc.OrchestratorServiceStub
    user: tuple[tuple[str, str], ...]
    internal: tuple[tuple[str, str], ...]
    request: requests_pb2.GetEnvironmentRequest | None = None
    via_gateway: list[float] = field(default_factory=list)
    straight: list[float] = field(default_factory=list)

    async def sample(self, keep: bool) -> None:
        started = time.perf_counter()
        await self.direct.GetEnvironment(self.request, metadata=self.internal, timeout=10)
        middle = time.perf_counter()
        await self.gateway.GetEnvironment(self.request, metadata=self.user, timeout=10)
        ended = time.perf_counter()
        if keep:
            self.straight.append(middle - started)
            self.via_gateway.append(ended - middle)


async def _measure(endpoints: dict[str, dict[str, str]]) -> dict[str, _Target]:
    channels: list[grpc.aio.Channel] = []
    targets: dict[str, _Target] = {}
    try:
        for mode, server in endpoints.items():
            gateway_channel = grpc.aio.insecure_channel(server["gateway"])
            direct_channel = grpc.aio.insecure_channel(server["orchestrator"])
            channels += [gateway_channel, direct_channel]
            targets[mode] = _Target(
                gateway_service_pb2_grpc.GatewayServiceStub(gateway_channel),
                orchestrator_service_pb2_grpc.OrchestratorServiceStub(direct_channel),
                (("authorization", f"Bearer {server['admin_key']}"),),
                (
                    ("authorization", f"Bearer {server['internal_token']}"),
                    ("x-sandbox-tenant", "default"),
                ),
            )
        for target in targets.values():
            created = await target.gateway.CreateEnvironment(
                requests_pb2.CreateEnvironmentRequest(), metadata=target.user, timeout=60
            )
            target.request = requests_pb2.GetEnvironmentRequest(
                environment_id=created.environment.id
            )
        for index in range(WARMUP_CALLS + MEASURED_CALLS):
            for target in targets.values():
                await target.sample(keep=index >= WARMUP_CALLS)
        for target in targets.values():
            assert target.request is not None
            await target.gateway.DeleteEnvironment(
                requests_pb2.DeleteEnvironmentRequest(environment_id=target.request.environment_id),
                metadata=target.user,
                timeout=60,
            )
        return targets
    finally:
        for channel in channels:
            await channel.close()


def _start_servers(
    context: Any, data_dir: Path
) -> tuple[dict[str, dict[str, str]], list[tuple[Any, Connection]]]:
    started: list[tuple[Any, Connection]] = []
    endpoints: dict[str, dict[str, str]] = {}
    try:
        for mode in MODES:
            parent, child = context.Pipe()
            server = context.Process(
                target=serve_in_child,
                args=(str(data_dir / mode), child, mode == "in-process"),
                daemon=True,
            )
            server.start()
            started.append((server, parent))
            if not parent.poll(120):
                raise RuntimeError(f"the {mode} embedded server did not start within 120 s")
            endpoints[mode] = parent.recv()
    except BaseException:
        _stop_servers(started)
        raise
    return endpoints, started


def _stop_servers(started: list[tuple[Any, Connection]]) -> None:
    for _, parent in started:
        parent.close()
    for server, _ in started:
        server.join(30)
        if server.is_alive():
            server.kill()


def _rows(mode: str, target: _Target) -> list[dict[str, Any]]:
    rows = []
    for name, fraction in (("p50", 0.5), ("p99", 0.99)):
        value = _percentile(target.via_gateway, fraction) * 1e3
        baseline = _percentile(target.straight, fraction) * 1e3
        rows.append(
            {
                "benchmark": "gateway_bench",
                "metric": f"GetEnvironment {name} via gateway ({MODES[mode]})",
                "value": value,
                "baseline": baseline,
                "ratio": value / baseline,
                "unit": "ms",
                "goal": f"ratio < {GOAL_RATIO}" if name == "p50" else "report",
            }
        )
    mean, mean_baseline = statistics.fmean(target.via_gateway), statistics.fmean(target.straight)
    rows.append(
        {
            "benchmark": "gateway_bench",
            "metric": f"GetEnvironment mean via gateway ({MODES[mode]})",
            "value": mean * 1e3,
            "baseline": mean_baseline * 1e3,
            "ratio": mean / mean_baseline,
            "unit": "ms",
            "goal": "report",
        }
    )
    return rows


def run() -> list[dict[str, Any]]:
    """p50, p99 and mean of GetEnvironment via each gateway, against its orchestrator."""
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as data_dir:
        endpoints, started = _start_servers(context, Path(data_dir))
        try:
            targets = asyncio.run(_measure(endpoints))
        finally:
            _stop_servers(started)
    return [row for mode, target in targets.items() for row in _rows(mode, target)]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import print_table

    print_table(run())
