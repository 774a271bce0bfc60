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
* plain: ``subprocess.run(["true"])`` from this process;
* bare spawn: ``os.posix_spawnp`` of ``true`` and its ``waitpid``, as the agent inside a
  sandbox starts a command, without ``subprocess``'s own work;
* open stream: one message echoed on a bidirectional stream already open to a trivial
  ``grpc.aio`` server in another child process: what a message costs once no call has to
  be set up, the floor under an exec sent on a stream held open per sandbox.

Two bounds follow from the same run. Any exec that is a gRPC call of its own costs at least
a unary round trip plus a bare spawn; an exec sent on an open stream, at least one message
plus a bare spawn. The first bound against the 2x goal says whether the
per-call design can meet it at all on this machine.

The orchestrator's own exec path without gRPC (``SandboxManager``'s spawn through the
environment's agent) is ``sandbox_bench``'s exec row. The first message of the raw gateway
stream (``started``) is timed too: it comes once the agent has spawned the command.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from multiprocessing.connection import Connection
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
ECHO_METHOD = "/bench.Echo/Echo"


def _same(message: bytes) -> bytes:
    return message


def _spawn_true() -> None:
    """Starts ``true`` and waits for it the way the sandbox's agent does, without
    ``subprocess``'s work around the spawn."""
    os.waitpid(os.posix_spawnp("true", ["true"], os.environ), 0)


def _serve_echo(conn: Connection) -> None:
    """Child process: a trivial ``grpc.aio`` server whose one bidirectional method sends
    back each message it reads; sends its address on ``conn`` and stops when the parent
    closes its end."""

    async def echo(messages: AsyncIterator[bytes], _: grpc.aio.ServicerContext) -> Any:
        async for message in messages:
            yield message

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.stream_stream_rpc_method_handler(echo, _same, _same)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send(f"127.0.0.1:{port}")
        try:
            await asyncio.get_running_loop().run_in_executor(None, conn.recv_bytes)
        except EOFError:
            pass
        finally:
            await server.stop(None)

    asyncio.run(main())


def _timed(call: Callable[[], Awaitable[Any]]) -> Sampler:
    async def sample() -> float:
        started = time.perf_counter()
        await call()
        return time.perf_counter() - started

    return sample


async def _samples(endpoints: dict[str, str], echo_address: str) -> dict[str, list[float]]:
    key = endpoints["admin_key"]
    async with (
        AsyncSandboxClient(endpoints["gateway"], api_key=key) as client,
        grpc.aio.insecure_channel(endpoints["gateway"]) as gateway_channel,
        grpc.aio.insecure_channel(endpoints["orchestrator"]) as orchestrator_channel,
        grpc.aio.insecure_channel(echo_address) as echo_channel,
    ):
        echo_stream = echo_channel.stream_stream(ECHO_METHOD, _same, _same)()
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

        async def bare_spawn() -> None:
            _spawn_true()

        async def open_stream() -> None:
            await echo_stream.write(exec_request.SerializeToString())
            await echo_stream.read()

        samplers: dict[str, Sampler] = {
            "sdk": _timed(lambda: sandbox.exec(["true"], check=True)),
            "raw gateway": _timed(raw_gateway),
            "raw orchestrator": _timed(raw_orchestrator),
            "unary": _timed(
                lambda: gateway.GetEnvironment(get_request, metadata=gateway_metadata, timeout=30)
            ),
            "plain": _timed(plain),
            "bare spawn": _timed(bare_spawn),
            "open stream": _timed(open_stream),
        }
        samples: dict[str, list[float]] = {name: [] for name in samplers}
        for index in range(WARMUP + SAMPLES):
            names = list(samplers) if index % 2 == 0 else list(reversed(samplers))
            for name in names:
                seconds = await samplers[name]()
                if index >= WARMUP:
                    samples[name].append(seconds)
        await echo_stream.done_writing()
        await sandbox.delete()
        return {**samples, "first message": first_messages[WARMUP:]}


def run() -> list[dict[str, Any]]:
    """The exec rows: through the SDK against the plain run, and the steps between."""
    context = multiprocessing.get_context("spawn")
    echo_connection, echo_end = context.Pipe()
    echo = context.Process(target=_serve_echo, args=(echo_end,), daemon=True)
    echo.start()
    echo_end.close()
    with tempfile.TemporaryDirectory() as directory:
        process, connection, endpoints = start_server(Path(directory) / "server")
        try:
            samples = asyncio.run(_samples(endpoints, echo_connection.recv()))
        finally:
            connection.close()
            echo_connection.close()
            process.join(30)
            echo.join(30)
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
        ratio_row(
            "exec path",
            "bound of an exec that is its own call: unary p50 + bare spawn p50",
            p50["unary"] + p50["bare spawn"],
            p50["plain"],
            f"report: above {GOAL} means the per-call design cannot meet the goal here",
        ),
        ratio_row(
            "exec path",
            "bare spawn p50, posix_spawnp + waitpid (vs subprocess.run)",
            p50["bare spawn"],
            p50["plain"],
            "report",
        ),
        ratio_row(
            "exec path",
            "one message on an open stream p50, trivial grpc.aio echo (vs subprocess.run)",
            p50["open stream"],
            p50["plain"],
            "report",
        ),
        ratio_row(
            "exec path",
            "bound of an exec sent on an open stream: message p50 + bare spawn p50",
            p50["open stream"] + p50["bare spawn"],
            p50["plain"],
            "report",
        ),
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import print_table

    print_table(run())
