"""Server CPU per call: the embedded server against a trivial grpc.aio server that answers
with the very same bytes.

Two child processes: the embedded server (gateway and orchestrator in one process, as
``sandbox-sdk serve`` runs them) and a trivial ``grpc.aio`` server whose generic handlers
return pre-serialized bytes: the GetEnvironment response and the event stream the
embedded server sent for the same requests. This process is the client; it reads each
server's CPU time (every thread's, from the kernel's schedstat) before and after a block
of calls. A round is one block on each server, back to back, in an order that alternates
between rounds so both see the same machine load; a row's ratio is the median over rounds
of the ratios within a round, with the 95% interval of that median (``median_interval``),
and its values are the medians per block.

Rows: server CPU per unary GetEnvironment through the gateway (goal: at most 1.3 times the
trivial server), and events per second of StreamExperimentEvents over a finished experiment
(goal: at least 0.85 times the trivial server), with server CPU per event alongside.
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
import psutil
import yaml
from bench_common import median_ratio, serve_in_child

from sandbox_sdk.api.v1 import experiment_pb2, requests_pb2

SERVICE = "sandbox.v1.GatewayService"
UNARY_METHOD = f"/{SERVICE}/GetEnvironment"
STREAM_METHOD = f"/{SERVICE}/StreamExperimentEvents"
UNARY_ROUNDS = 20
UNARY_BLOCK = 500
STREAM_ROUNDS = 20
STREAM_INPUTS = 300
WARM_UP_ROUNDS = 2
UNARY_GOAL = 1.3
STREAM_GOAL = 0.85


# The gateway's rate limit stays on (its check is part of every call's cost), high enough
# that the benchmark's back-to-back calls never meet it.
CONFIG = {"gateway": {"limits": {"default": {"requests_per_second": 1e6, "burst": 1_000_000}}}}


def _serve_embedded(data_dir: str, conn: Connection) -> None:
    """Child process: the embedded server (see ``bench_common.serve_in_child``) with
    ``CONFIG``."""
    config = Path(data_dir).with_suffix(".yaml")
    config.write_text(yaml.safe_dump(CONFIG))
    serve_in_child(data_dir, conn, config_path=str(config))


def _serve_trivial(conn: Connection) -> None:
    """Child process: a grpc.aio server answering with the bytes the parent sends."""
    unary_response, stream_responses = conn.recv()

    async def get_environment(request: bytes, context: Any) -> bytes:
        return unary_response  # type: ignore[no-any-return]

    async def stream_events(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for message in stream_responses:
            yield message

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "GetEnvironment": grpc.unary_unary_rpc_method_handler(get_environment),
                        "StreamExperimentEvents": grpc.unary_stream_rpc_method_handler(
                            stream_events
                        ),
                    },
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send(f"127.0.0.1:{port}")
        try:
            await asyncio.get_running_loop().run_in_executor(None, conn.recv_bytes)
        except EOFError:
            pass
        finally:
            await server.stop(1.0)

    asyncio.run(main())


def _cpu(process: psutil.Process) -> float:
    """The seconds of CPU the process's threads have run, in nanoseconds' resolution from
    each thread's schedstat (the kernel's user and system times tick in 10 ms, a few per
    cent of a block of calls); the ticked times where schedstat is missing."""
    if not os.path.exists(f"/proc/{process.pid}/task/{process.pid}/schedstat"):
        times = process.cpu_times()
        return float(times.user + times.system)
    total = 0
    with os.scandir(f"/proc/{process.pid}/task") as tasks:
        for task in tasks:
            try:
                with open(f"{task.path}/schedstat") as schedstat:
                    total += int(schedstat.read().split()[0])
            except FileNotFoundError:
                continue  # a thread that ended just now
    return total / 1e9


class _Server:
    """One server under test: its process (for its CPU time) and raw-bytes callables."""

    def __init__(self, pid: int, address: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.process = psutil.Process(pid)
        self.channel = grpc.aio.insecure_channel(address)
        self.metadata = metadata
        self.unary = self.channel.unary_unary(UNARY_METHOD)
        self.stream = self.channel.unary_stream(STREAM_METHOD)
        self.stream_request = b""
        self.blocks: list[tuple[float, float, int]] = []
        self.results: dict[str, list[tuple[float, float, int]]] = {}

    async def measure(self, block: Callable[[], Awaitable[int]]) -> None:
        """Runs one block of calls; notes its CPU seconds, wall seconds and count."""
        cpu = _cpu(self.process)
        started = time.perf_counter()
        count = await block()
        self.blocks.append((_cpu(self.process) - cpu, time.perf_counter() - started, count))


async def _prepare(server: _Server) -> tuple[bytes, bytes, list[bytes]]:
    """Creates an environment and a finished experiment on the embedded server; returns
    the GetEnvironment request, its response and the event stream's messages."""
    create = server.channel.unary_unary(f"/{SERVICE}/CreateEnvironment")
    created = requests_pb2.CreateEnvironmentResponse.FromString(
        await create(requests_pb2.CreateEnvironmentRequest().SerializeToString(), **_call(server))
    )
    unary_request = requests_pb2.GetEnvironmentRequest(
        environment_id=created.environment.id
    ).SerializeToString()
    unary_response = await server.unary(unary_request, **_call(server))
    spec = experiment_pb2.ExperimentSpec(
        model="scripted",
        inputs=[
            experiment_pb2.ExperimentInput(prompt=f"input {index}")
            for index in range(STREAM_INPUTS)
        ],
    )
    create_experiment = server.channel.unary_unary(f"/{SERVICE}/CreateExperiment")
    experiment = requests_pb2.CreateExperimentResponse.FromString(
        await create_experiment(
            requests_pb2.CreateExperimentRequest(
                environment_id=created.environment.id, spec=spec
            ).SerializeToString(),
            **_call(server),
        )
    ).experiment
    stream_request = requests_pb2.StreamExperimentEventsRequest(
        experiment_id=experiment.id, follow=True
    ).SerializeToString()
    async for _ in server.stream(stream_request, **_call(server)):
        pass  # follow: returns once the experiment is final
    stream_request = requests_pb2.StreamExperimentEventsRequest(
        experiment_id=experiment.id
    ).SerializeToString()
    events = [message async for message in server.stream(stream_request, **_call(server))]
    return unary_request, unary_response, [stream_request, *events]


def _call(server: _Server) -> dict[str, Any]:
    return {"metadata": server.metadata, "timeout": 60}


async def _compare(embedded: _Server, trivial: _Server, unary_request: bytes) -> None:
    stream_request = trivial.stream_request

    def unary_block(server: _Server) -> Callable[[], Awaitable[int]]:
        async def block() -> int:
            for _ in range(UNARY_BLOCK):
                await server.unary(unary_request, **_call(server))
            return UNARY_BLOCK

        return block

    def stream_block(server: _Server) -> Callable[[], Awaitable[int]]:
        async def block() -> int:
            count = 0
            for _ in range(5):
                async for _message in server.stream(stream_request, **_call(server)):
                    count += 1
            return count

        return block

    for phase, rounds, make in (
        ("unary", UNARY_ROUNDS, unary_block),
        ("stream", STREAM_ROUNDS, stream_block),
    ):
        # Unmeasured rounds first: the trivial server's first two blocks of calls cost up
        # to half as much again as its later ones, in every run.
        for index in range(-WARM_UP_ROUNDS, rounds):
            order = (embedded, trivial) if index % 2 == 0 else (trivial, embedded)
            for server in order:
                await server.measure(make(server))
        for server in (embedded, trivial):
            server.results[phase] = server.blocks[WARM_UP_ROUNDS:]
            server.blocks = []


async def _run(endpoints: dict[str, Any], embedded_pid: int, start_trivial: Any) -> list[Any]:
    embedded = _Server(
        embedded_pid, endpoints["gateway"], (("authorization", f"Bearer {endpoints['admin_key']}"),)
    )
    try:
        unary_request, unary_response, stream = await _prepare(embedded)
        embedded.stream_request = stream[0]
        trivial_pid, trivial_address = start_trivial(unary_response, stream[1:])
        # The very calls the embedded server gets, its key included: only the answer differs.
        trivial = _Server(trivial_pid, trivial_address, embedded.metadata)
        trivial.stream_request = stream[0]
        try:
            await _compare(embedded, trivial, unary_request)
        finally:
            await trivial.channel.close()
        return [embedded, trivial, len(stream) - 1]
    finally:
        await embedded.channel.close()


def run() -> list[dict[str, Any]]:
    """Server CPU per GetEnvironment and event-stream throughput, against a trivial server."""
    context = multiprocessing.get_context("spawn")
    children: list[tuple[Any, Connection]] = []

    def start_trivial(unary_response: bytes, events: list[bytes]) -> tuple[int, str]:
        parent, child = context.Pipe()
        process = context.Process(target=_serve_trivial, args=(child,), daemon=True)
        process.start()
        children.append((process, parent))
        parent.send((unary_response, events))
        if not parent.poll(60):
            raise RuntimeError("the trivial server did not start within 60 s")
        return int(process.pid), str(parent.recv())

    with tempfile.TemporaryDirectory() as directory:
        parent, child = context.Pipe()
        server = context.Process(
            target=_serve_embedded, args=(str(Path(directory) / "server"), child), daemon=True
        )
        server.start()
        children.append((server, parent))
        try:
            if not parent.poll(120):
                raise RuntimeError("the embedded server did not start within 120 s")
            endpoints = parent.recv()
            embedded, trivial, events = asyncio.run(_run(endpoints, int(server.pid), start_trivial))
        finally:
            for process, conn in children:
                conn.close()
                process.join(10)
                if process.is_alive():
                    process.kill()
    unary, base_unary = embedded.results["unary"], trivial.results["unary"]
    stream, base_stream = embedded.results["stream"], trivial.results["stream"]
    unary_cpu = _round_ratios(unary, base_unary, cpu=True)
    events_per_second = [1 / ratio for ratio in _round_ratios(stream, base_stream, cpu=False)]
    event_cpu = _round_ratios(stream, base_stream, cpu=True)
    return [
        {
            "benchmark": "server_cpu",
            "metric": "server CPU per GetEnvironment via gateway (vs trivial grpc.aio)",
            "value": _median_per_unit(unary, cpu=True) * 1e6,
            "baseline": _median_per_unit(base_unary, cpu=True) * 1e6,
            **median_ratio(unary_cpu),
            "unit": "µs",
            "goal": f"<= {UNARY_GOAL}",
        },
        {
            "benchmark": "server_cpu",
            "metric": f"StreamExperimentEvents events/s ({events} events, vs trivial grpc.aio)",
            "value": 1 / _median_per_unit(stream, cpu=False),
            "baseline": 1 / _median_per_unit(base_stream, cpu=False),
            **median_ratio(events_per_second),
            "unit": "events/s",
            "goal": f">= {STREAM_GOAL}",
        },
        {
            "benchmark": "server_cpu",
            "metric": "server CPU per streamed event (vs trivial grpc.aio)",
            "value": _median_per_unit(stream, cpu=True) * 1e6,
            "baseline": _median_per_unit(base_stream, cpu=True) * 1e6,
            **median_ratio(event_cpu),
            "unit": "µs",
            "goal": "",
        },
    ]


def _per_unit(block: tuple[float, float, int], *, cpu: bool) -> float:
    """A block's CPU seconds (``cpu``) or wall seconds per call or event."""
    cpu_seconds, wall_seconds, count = block
    return (cpu_seconds if cpu else wall_seconds) / count


def _median_per_unit(blocks: list[tuple[float, float, int]], *, cpu: bool) -> float:
    return statistics.median(_per_unit(block, cpu=cpu) for block in blocks)


def _round_ratios(
    blocks: list[tuple[float, float, int]],
    base_blocks: list[tuple[float, float, int]],
    *,
    cpu: bool,
) -> list[float]:
    """The embedded server's cost per unit over the trivial server's, round by round: the
    two blocks of a round ran back to back, under the same machine load, so the median
    of these is not moved by a round that other work on the machine disturbed, as a
    ratio of totals is."""
    return [
        _per_unit(block, cpu=cpu) / _per_unit(base, cpu=cpu)
        for block, base in zip(blocks, base_blocks, strict=True)
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import print_table

    print_table(run())
