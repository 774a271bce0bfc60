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
* trivial unary: the same request's bytes answered by a trivial ``grpc.aio`` unary method
  (see ``_beside``): the round trip with no server work at all;
* open stream: one message echoed on a bidirectional stream already open to a trivial
  ``grpc.aio`` server (in the server's process, see ``_beside``): what a message costs once
  no call has to be set up, the floor under an exec sent on a stream held open;
* exec on open stream: a sketch of that design, the orchestrator's own exec path behind
  such a stream (see ``_beside``).

Bounds follow from the same run. Any exec that is a gRPC call of its own through the gateway
costs at least what GetEnvironment costs (authenticated, rate-limited, routed, its
environment found) plus a bare spawn; with no server work at all, a trivial unary round
trip plus a bare spawn; an exec sent on an open stream, at least one message plus a bare
spawn. The first against the 2x goal says whether an exec through this gateway can meet it
at all on this machine.

The orchestrator's own exec path without gRPC (``SandboxManager``'s spawn through the
environment's agent) is ``sandbox_bench``'s exec row. The first message of the raw gateway
stream (``started``) is timed too: it comes once the agent has spawned the command.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
from sandbox_sdk.server.embedded import EmbeddedServer
from sandbox_sdk.server.orchestrator.sandbox import convert, validation
from sandbox_sdk.server.tenancy import DEFAULT_TENANT, TENANT_KEY

SAMPLES = 300
WARMUP = 30
GOAL = 2.0

Sampler = Callable[[], Awaitable[float]]
SAME_METHOD = "/bench.Open/Same"
ECHO_METHOD = "/bench.Open/Echo"
EXEC_METHOD = "/bench.Open/Exec"


def _same(message: bytes) -> bytes:
    return message


def _spawn_true() -> None:
    """Starts ``true`` and waits for it the way the sandbox's agent does, without
    ``subprocess``'s work around the spawn."""
    os.waitpid(os.posix_spawnp("true", ["true"], os.environ), 0)


async def _beside(
    server: EmbeddedServer,
) -> tuple[dict[str, str], Callable[[], Awaitable[None]]]:
    """In the embedded server's process: a ``grpc.aio`` server of three methods. ``Same``
    (unary) answers with its request; ``Echo`` (bidirectional) sends back each message it
    reads. ``Exec`` is a sketch of an exec
    sent on a stream held open, not the product's: each message is an ExecCommandRequest,
    run by the orchestrator's own exec path (``SandboxManager.exec_command``, agent and
    sandbox as they are), answered with one message, its ``exited`` event. It skips the
    gateway's checks, so it is a lower estimate of such a design."""
    manager = server.orchestrator.sandboxes
    # The port is loopback TCP, like the gateway's it is compared with; only the parent,
    # told this token, may run commands through it.
    token = secrets.token_hex(16)
    bearer = f"Bearer {token}"

    async def same(request: bytes, _: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    async def echo(
        messages: AsyncIterator[bytes], _: grpc.aio.ServicerContext[bytes, bytes]
    ) -> Any:
        async for message in messages:
            yield message

    async def exec_each(
        messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> Any:
        if dict(context.invocation_metadata() or ()).get("authorization") != bearer:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "not the benchmark's stream")
        async for message in messages:
            request = requests_pb2.ExecCommandRequest.FromString(message)
            command = validation.command(request, manager.settings)
            events = manager.exec_command(DEFAULT_TENANT, request.environment_id, command)
            last = None
            async for event in events:
                last = event
            assert last is not None
            yield convert.exec_event(last).SerializeToString()

    methods = {
        "Same": grpc.unary_unary_rpc_method_handler(same, _same, _same),
        "Echo": grpc.stream_stream_rpc_method_handler(echo, _same, _same),
        "Exec": grpc.stream_stream_rpc_method_handler(exec_each, _same, _same),
    }
    sketch = grpc.aio.server()
    sketch.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Open", methods),))
    port = sketch.add_insecure_port("127.0.0.1:0")
    await sketch.start()
    endpoints = {"open streams": f"127.0.0.1:{port}", "open streams token": token}
    return endpoints, lambda: sketch.stop(None)


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
        grpc.aio.insecure_channel(endpoints["open streams"]) as open_channel,
    ):
        # grpc.aio opens a stream written with write(); its stubs want a request iterator.
        echo_stream = open_channel.stream_stream(ECHO_METHOD, _same, _same)()  # type: ignore[call-arg]
        exec_stream = open_channel.stream_stream(EXEC_METHOD, _same, _same)(  # type: ignore[call-arg]
            metadata=(("authorization", f"Bearer {endpoints['open streams token']}"),)
        )
        trivial_unary = open_channel.unary_unary(SAME_METHOD, _same, _same)
        sandbox = await client.create_environment()
        gateway = gateway_service_pb2_grpc.GatewayServiceStub(gateway_channel)
        orchestrator = orchestrator_service_pb2_grpc.OrchestratorServiceStub(orchestrator_channel)
        exec_request = requests_pb2.ExecCommandRequest(environment_id=sandbox.id, argv=["true"])
        get_request = requests_pb2.GetEnvironmentRequest(environment_id=sandbox.id)
        get_bytes = get_request.SerializeToString()
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

        async def exec_on_open_stream() -> None:
            await exec_stream.write(exec_request.SerializeToString())
            await exec_stream.read()

        samplers: dict[str, Sampler] = {
            "sdk": _timed(lambda: sandbox.exec(["true"], check=True)),
            "raw gateway": _timed(raw_gateway),
            "raw orchestrator": _timed(raw_orchestrator),
            "unary": _timed(
                lambda: gateway.GetEnvironment(get_request, metadata=gateway_metadata, timeout=30)
            ),
            "plain": _timed(plain),
            "bare spawn": _timed(bare_spawn),
            "trivial unary": _timed(lambda: trivial_unary(get_bytes, timeout=30)),
            "open stream": _timed(open_stream),
            "exec on open stream": _timed(exec_on_open_stream),
        }
        samples: dict[str, list[float]] = {name: [] for name in samplers}
        for index in range(WARMUP + SAMPLES):
            names = list(samplers) if index % 2 == 0 else list(reversed(samplers))
            for name in names:
                seconds = await samplers[name]()
                if index >= WARMUP:
                    samples[name].append(seconds)
        await echo_stream.done_writing()
        await exec_stream.done_writing()
        await sandbox.delete()
        return {**samples, "first message": first_messages[WARMUP:]}


def run() -> list[dict[str, Any]]:
    """The exec rows: through the SDK against the plain run, and the steps between."""
    with tempfile.TemporaryDirectory() as directory:
        process, connection, endpoints = start_server(Path(directory) / "server", beside=_beside)
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
        ratio_row(
            "exec path",
            "bound of an exec that is its own call: unary p50 + bare spawn p50",
            p50["unary"] + p50["bare spawn"],
            p50["plain"],
            f"report: above {GOAL} means the per-call design cannot meet the goal here",
        ),
        ratio_row(
            "exec path",
            "trivial unary round trip p50, grpc.aio echo (vs GetEnvironment through the gateway)",
            p50["trivial unary"],
            p50["unary"],
            "report",
        ),
        ratio_row(
            "exec path",
            "bound with no server work at all: trivial unary p50 + bare spawn p50",
            p50["trivial unary"] + p50["bare spawn"],
            p50["plain"],
            "report",
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
        ratio_row(
            "exec path",
            "sketch: exec on an open stream, orchestrator's path, no gateway (vs subprocess.run)",
            p50["exec on open stream"],
            p50["plain"],
            f"report: above {GOAL} means that design alone cannot meet the goal here",
        ),
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import print_table

    print_table(run())
