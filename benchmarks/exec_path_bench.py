"""Exec ``true`` through the SDK against ``subprocess.run(["true"])``, and where the time
between them goes.

The embedded server (``sandbox-sdk serve``) runs in a child process; this process is the
client. Each sample, interleaved so all see the same machine load:

* sdk: ``AsyncSandbox.exec(["true"])``, the issue's row (goal: at most 2x the plain run);
* raw gateway: the generated stub's ExecCommand stream through the gateway, read to its end;
* raw orchestrator: the same stream straight to the orchestrator's own gRPC port (its
  internal token, the tenant header the gateway would send);
* unary: the generated stub's GetEnvironment through the gateway, the round trip of one
  gRPC call with no sandbox work, the floor under any gRPC exec;
* plain: ``subprocess.run(["true"])`` from this process.

The orchestrator's own exec path without gRPC (``SandboxManager``'s spawn through the
environment's agent) is ``sandbox_bench``'s exec row. The first message of the raw gateway
stream (``started``) is timed too: it comes once the agent has spawned the command.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from bench_common import plain_exec, ratio_row, start_server

from sandbox_sdk import AsyncSandboxClient
from sandbox_sdk.api.v1 import (
    gateway_service_pb2_grpc,
    orchestrator_service_pb2_grpc,
    requests_pb2,
)
from sandbox_sdk.server.tenancy import DEFAULT_TENANT, TENANT_KEY

SAMPLES = 300
WARMUP = 30
GOAL = 2.0

Sampler = Callable[[], Awaitable[float]]


def _timed(call: Callable[[], Awaitable[Any]]) -> Sampler:
    async def sample() -> float:
        started = time.perf_counter()
        await call()
        return time.perf_counter() - started

    return sample


async def _samples(endpoints: dict[str, str]) -> dict[str, list[float]]:
    key = endpoints["admin_key"]
    async with (
        AsyncSandboxClient(endpoints["gateway"], api_key=key) as client,
        grpc.aio.insecure_channel(endpoints["gateway"]) as gateway_channel,
        grpc.aio.insecure_channel(endpoints["orchestrator"]) as orchestrator_channel,
    ):
        sandbox = await client.create_environment()
        gateway = gateway_service_pb2_grpc.GatewayServiceStub(gateway_channel)
        orchestrator = orchestrator_service_pb2_grpc.OrchestratorServiceStub(orchestrator_channel)
        exec_request = requests_pb2.ExecCommandRequest(environment_id=sandbox.id, argv=["true"])
        get_request = requests_pb2.GetEnvironmentRequest(environment_id=sandbox.id)
        gateway_metadata = (("authorization", f"Bearer {key}"),)
        orchestrator_metadata = (
            ("authorization", f"Bearer {endpoints['internal_token']}"),
            (TENANT_KEY, DEFAULT_TENANT),
        )
        first_messages: list[float] = []

        async def raw_gateway() -> None:
            started = time.perf_counter()
            call = gateway.ExecCommand(exec_request, metadata=gateway_metadata, timeout=30)
            first = None
            async for _ in call:
                first = first or time.perf_counter() - started
            first_messages.append(first or 0.0)

        async def raw_orchestrator() -> None:
            call = orchestrator.ExecCommand(
                exec_request, metadata=orchestrator_metadata, timeout=30
            )
            async for _ in call:
                pass

        async def plain() -> None:
            plain_exec()

        samplers: dict[str, Sampler] = {
            "sdk": _timed(lambda: sandbox.exec(["true"], check=True)),
            "raw gateway": _timed(raw_gateway),
            "raw orchestrator": _timed(raw_orchestrator),
            "unary": _timed(
                lambda: gateway.GetEnvironment(get_request, metadata=gateway_metadata, timeout=30)
            ),
            "plain": _timed(plain),
        }
        samples: dict[str, list[float]] = {name: [] for name in samplers}
        for index in range(WARMUP + SAMPLES):
            names = list(samplers) if index % 2 == 0 else list(reversed(samplers))
            for name in names:
                seconds = await samplers[name]()
                if index >= WARMUP:
                    samples[name].append(seconds)
        await sandbox.delete()
        return {**samples, "first message": first_messages[WARMUP:]}


def run() -> list[dict[str, Any]]:
    """The exec rows: through the SDK against the plain run, and the steps between."""
    with tempfile.TemporaryDirectory() as directory:
        process, connection, endpoints = start_server(Path(directory) / "server")
        try:
            samples = asyncio.run(_samples(endpoints))
        finally:
            connection.close()
            process.join(30)
    p50 = {name: statistics.median(values) for name, values in samples.items()}
    return [
        ratio_row(
            "exec path",
            "exec `true` p50 through the SDK (vs subprocess.run)",
            p50["sdk"],
            p50["plain"],
            f"<= {GOAL}",
        ),
        ratio_row(
            "exec path",
            "exec p50, SDK (vs the raw stub through the gateway)",
            p50["sdk"],
            p50["raw gateway"],
            "report",
        ),
        ratio_row(
            "exec path",
            "exec p50, raw stub through the gateway (vs straight to the orchestrator)",
            p50["raw gateway"],
            p50["raw orchestrator"],
            "report",
        ),
        ratio_row(
            "exec path",
            "first message (started) p50, through the gateway (vs the whole exec)",
            p50["first message"],
            p50["raw gateway"],
            "report",
        ),
        ratio_row(
            "exec path",
            "GetEnvironment p50, raw stub through the gateway (vs subprocess.run)",
            p50["unary"],
            p50["plain"],
            "report: the gRPC floor",
        ),
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import print_table

    print_table(run())
