"""SDK overhead against the raw generated stub, on the same channel and server.

A minimal GatewayService answers GetEnvironment and streams STREAM_EVENTS
pre-built events from StreamExperimentEvents. It runs in a child process, so
its work neither competes with the client for this process's GIL nor hides
the client's own cost. Every round measures the SDK and the raw stub back to
back, alternating which goes first, and yields one SDK/raw ratio; the median
ratio over the rounds is reported. Rounds are short and many: on a loaded
machine the wall time of one long stream varies twofold, while short
interleaved rounds keep both sides of each ratio under the same load.
``value`` and ``baseline`` are the medians of the two sides.

Goals: unary p50 latency ratio under 1.15; streaming cost (raw events/s over
SDK events/s) under 1.1, for the sync and the asyncio client. Client CPU time
per event (this process, gRPC's threads included) is reported alongside. Both
loops only count events: the SDK converts an event's payload and time when
they are first read, as a raw caller pays for reading the message's fields.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from sandbox_sdk import (
    AsyncExperiment,
    AsyncSandboxClient,
    Experiment,
    ExperimentInfo,
    ExperimentState,
    SandboxClient,
)
from sandbox_sdk.api.v1 import (
    environment_pb2,
    experiment_pb2,
    gateway_service_pb2_grpc,
    requests_pb2,
)

API_KEY = "sk-bench-0123456789abcdef"
ENVIRONMENT_ID = "env-o1-0123456789abcdef"
EXPERIMENT_ID = "exp-o1-0123456789abcdef"
STREAM_EVENTS = 500
STREAM_ROUNDS = 60
UNARY_ROUNDS = 40
UNARY_BLOCK = 25
WARMUP_ROUNDS = 2
UNARY_GOAL = 1.15
STREAM_GOAL = 1.1


class _Gateway(gateway_service_pb2_grpc.GatewayServiceServicer):
    def __init__(self) -> None:
        environment = environment_pb2.Environment(
            id=ENVIRONMENT_ID, state=environment_pb2.ENVIRONMENT_STATE_RUNNING, isolation="bench"
        )
        environment.spec.labels["team"] = "bench"
        environment.create_time.GetCurrentTime()
        self._environment = requests_pb2.GetEnvironmentResponse(environment=environment)
        self._events = [_event(sequence) for sequence in range(1, STREAM_EVENTS + 1)]

    def GetEnvironment(self, request: Any, context: Any) -> Any:
        return self._environment

    def StreamExperimentEvents(self, request: Any, context: Any) -> Any:
        yield from self._events[request.after_sequence :]


def _event(sequence: int) -> requests_pb2.StreamExperimentEventsResponse:
    event = experiment_pb2.ExperimentEvent(
        sequence=sequence,
        experiment_id=EXPERIMENT_ID,
        metric=experiment_pb2.MetricSample(name="latency_seconds", value=0.1, unit="s"),
    )
    event.time.GetCurrentTime()
    return requests_pb2.StreamExperimentEventsResponse(event=event)


def _serve(conn: Connection) -> None:
    """Child process: serves the gateway until the parent closes the pipe."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(_Gateway(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(f"127.0.0.1:{port}")
    try:
        conn.recv_bytes()  # returns or raises EOFError when the parent closes its end
    except EOFError:
        pass
    finally:
        server.stop(None)


@dataclass
class _Pair:
    """One SDK-vs-raw comparison: a sample of each side per round."""

    sdk: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    sdk_cpu: list[float] = field(default_factory=list)
    raw_cpu: list[float] = field(default_factory=list)

    def add(self, side: str, value: float, cpu: float) -> None:
        getattr(self, side).append(value)
        getattr(self, f"{side}_cpu").append(cpu)

    def median_ratio(self, higher_is_better: bool = False) -> float:
        """Median over rounds of SDK cost relative to raw cost."""
        pairs = zip(self.sdk, self.raw, strict=True)
        ratios = [raw / sdk if higher_is_better else sdk / raw for sdk, raw in pairs]
        return statistics.median(ratios)

    def median_cpu_ratio(self) -> float:
        pairs = zip(self.sdk_cpu, self.raw_cpu, strict=True)
        return statistics.median(sdk / raw for sdk, raw in pairs)


def _sides(round_index: int) -> tuple[str, str]:
    return ("sdk", "raw") if round_index % 2 == 0 else ("raw", "sdk")


def _unary_p50(call: Callable[[], object]) -> tuple[float, float]:
    samples = []
    cpu_started = time.process_time()
    for _ in range(UNARY_BLOCK):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), (time.process_time() - cpu_started) / UNARY_BLOCK


def _stream_rate(consume: Callable[[], int]) -> tuple[float, float]:
    cpu_started = time.process_time()
    started = time.perf_counter()
    count = consume()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    if count != STREAM_EVENTS:
        raise RuntimeError(f"expected {STREAM_EVENTS} events, got {count}")
    return count / elapsed, cpu / count


async def _async_unary_p50(call: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    samples = []
    cpu_started = time.process_time()
    for _ in range(UNARY_BLOCK):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), (time.process_time() - cpu_started) / UNARY_BLOCK


async def _async_stream_rate(consume: Callable[[], Awaitable[int]]) -> tuple[float, float]:
    cpu_started = time.process_time()
    started = time.perf_counter()
    count = await consume()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    if count != STREAM_EVENTS:
        raise RuntimeError(f"expected {STREAM_EVENTS} events, got {count}")
    return count / elapsed, cpu / count


def _measure_sync(target: str) -> tuple[_Pair, _Pair]:
    metadata = (("authorization", f"Bearer {API_KEY}"),)
    unary_request = requests_pb2.GetEnvironmentRequest(environment_id=ENVIRONMENT_ID)
    stream_request = requests_pb2.StreamExperimentEventsRequest(experiment_id=EXPERIMENT_ID)
    with SandboxClient(target, api_key=API_KEY) as client:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(client._transport.channel)
        timeout = client.settings.timeout
        experiment = Experiment(
            client._transport,
            ExperimentInfo(EXPERIMENT_ID, ENVIRONMENT_ID, ExperimentState.RUNNING),
        )
        unary = {
            "sdk": lambda: client.get_environment(ENVIRONMENT_ID),
            "raw": lambda: stub.GetEnvironment(unary_request, timeout=timeout, metadata=metadata),
        }
        stream = {
            "sdk": lambda: sum(1 for _ in experiment.events(follow=False)),
            "raw": lambda: sum(
                1 for _ in stub.StreamExperimentEvents(stream_request, metadata=metadata)
            ),
        }
        unary_pair, stream_pair = _Pair(), _Pair()
        for round_index in range(WARMUP_ROUNDS + max(UNARY_ROUNDS, STREAM_ROUNDS)):
            warm = round_index < WARMUP_ROUNDS
            measured = round_index - WARMUP_ROUNDS
            for side in _sides(round_index):
                if warm or measured < UNARY_ROUNDS:
                    latency, cpu = _unary_p50(unary[side])
                    if not warm:
                        unary_pair.add(side, latency, cpu)
                if warm or measured < STREAM_ROUNDS:
                    rate, cpu = _stream_rate(stream[side])
                    if not warm:
                        stream_pair.add(side, rate, cpu)
    return unary_pair, stream_pair


async def _measure_async(target: str) -> tuple[_Pair, _Pair]:
    metadata = (("authorization", f"Bearer {API_KEY}"),)
    unary_request = requests_pb2.GetEnvironmentRequest(environment_id=ENVIRONMENT_ID)
    stream_request = requests_pb2.StreamExperimentEventsRequest(experiment_id=EXPERIMENT_ID)
    async with AsyncSandboxClient(target, api_key=API_KEY) as client:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(client._transport.channel)
        timeout = client.settings.timeout
        experiment = AsyncExperiment(
            client._transport,
            ExperimentInfo(EXPERIMENT_ID, ENVIRONMENT_ID, ExperimentState.RUNNING),
        )

        async def sdk_stream() -> int:
            return sum([1 async for _ in experiment.events(follow=False)])

        async def raw_stream() -> int:
            call = stub.StreamExperimentEvents(stream_request, metadata=metadata)
            return sum([1 async for _ in call])

        unary: dict[str, Callable[[], Awaitable[object]]] = {
            "sdk": lambda: client.get_environment(ENVIRONMENT_ID),
            "raw": lambda: stub.GetEnvironment(unary_request, timeout=timeout, metadata=metadata),
        }
        stream = {"sdk": sdk_stream, "raw": raw_stream}
        unary_pair, stream_pair = _Pair(), _Pair()
        for round_index in range(WARMUP_ROUNDS + max(UNARY_ROUNDS, STREAM_ROUNDS)):
            warm = round_index < WARMUP_ROUNDS
            measured = round_index - WARMUP_ROUNDS
            for side in _sides(round_index):
                if warm or measured < UNARY_ROUNDS:
                    latency, cpu = await _async_unary_p50(unary[side])
                    if not warm:
                        unary_pair.add(side, latency, cpu)
                if warm or measured < STREAM_ROUNDS:
                    rate, cpu = await _async_stream_rate(stream[side])
                    if not warm:
                        stream_pair.add(side, rate, cpu)
    return unary_pair, stream_pair


def _rows(client: str, unary: _Pair, stream: _Pair) -> list[dict[str, Any]]:
    name = "sdk" if client == "sync" else "sdk_async"
    return [
        {
            "benchmark": f"{name}_unary_get_environment",
            "metric": "p50 latency",
            "value": statistics.median(unary.sdk) * 1e6,
            "baseline": statistics.median(unary.raw) * 1e6,
            "ratio": unary.median_ratio(),
            "unit": "us",
            "goal": f"ratio < {UNARY_GOAL} (SDK vs raw stub, median of rounds)",
        },
        {
            "benchmark": f"{name}_stream_experiment_events",
            "metric": "events/s",
            "value": statistics.median(stream.sdk),
            "baseline": statistics.median(stream.raw),
            "ratio": stream.median_ratio(higher_is_better=True),
            "unit": "events/s",
            "goal": f"cost ratio (raw/SDK rate) < {STREAM_GOAL}, median of rounds",
        },
        {
            "benchmark": f"{name}_stream_experiment_events",
            "metric": "client CPU per event",
            "value": statistics.median(stream.sdk_cpu) * 1e6,
            "baseline": statistics.median(stream.raw_cpu) * 1e6,
            "ratio": stream.median_cpu_ratio(),
            "unit": "us",
            "goal": "report",
        },
    ]


def run() -> list[dict[str, Any]]:
    """Measures the sync and asyncio SDK against the raw stub; returns the benchmark rows."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=_serve, args=(child,), daemon=True)
    server.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the benchmark server did not start within 60 s")
        target = parent.recv()
        sync_unary, sync_stream = _measure_sync(target)
        async_unary, async_stream = asyncio.run(_measure_async(target))
    finally:
        parent.close()
        server.join(30)
        if server.is_alive():
            server.kill()
    return _rows("sync", sync_unary, sync_stream) + _rows("async", async_unary, async_stream)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import print_table

    print_table(run())
