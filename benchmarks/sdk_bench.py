"""SDK overhead against the raw generated stub, on the same channel and server.

A trivial in-process GatewayService answers GetEnvironment and streams N
events from StreamExperimentEvents. SDK and raw measurements are interleaved
in small blocks so machine noise hits both alike. Goals: unary p50 ratio under
1.15, streaming cost (raw events/s over SDK events/s) under 1.1.
"""

from __future__ import annotations

import statistics
import time
from concurrent import futures
from typing import Any

import grpc

from sandbox.v1 import (
    environment_pb2,
    experiment_pb2,
    gateway_service_pb2_grpc,
    requests_pb2,
)
from sandbox_sdk import Experiment, ExperimentInfo, ExperimentState, SandboxClient

API_KEY = "sk-bench-0123456789abcdef"
ENVIRONMENT_ID = "env-o1-0123456789abcdef"
EXPERIMENT_ID = "exp-o1-0123456789abcdef"
STREAM_EVENTS = 2000
UNARY_ROUNDS = 30
UNARY_BLOCK = 40
STREAM_ROUNDS = 6


class _Gateway(gateway_service_pb2_grpc.GatewayServiceServicer):
    def __init__(self) -> None:
        environment = environment_pb2.Environment(id=ENVIRONMENT_ID, state=2, isolation="bench")
        environment.spec.labels["team"] = "bench"
        environment.create_time.GetCurrentTime()
        self._environment = requests_pb2.GetEnvironmentResponse(environment=environment)
        self._events = [
            requests_pb2.StreamExperimentEventsResponse(
                event=experiment_pb2.ExperimentEvent(
                    sequence=index + 1,
                    experiment_id=EXPERIMENT_ID,
                    metric=experiment_pb2.MetricSample(name="latency_seconds", value=0.1, unit="s"),
                )
            )
            for index in range(STREAM_EVENTS)
        ]

    def GetEnvironment(self, request: Any, context: Any) -> Any:
        return self._environment

    def StreamExperimentEvents(self, request: Any, context: Any) -> Any:
        yield from self._events[request.after_sequence :]


def _p50_unary(call: Any) -> float:
    samples = []
    for _ in range(UNARY_BLOCK):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _stream_seconds(consume: Any) -> float:
    started = time.perf_counter()
    count = consume()
    elapsed = time.perf_counter() - started
    assert count == STREAM_EVENTS
    return elapsed


def run() -> list[dict[str, Any]]:
    """Measures the SDK against the raw stub; returns the benchmark rows."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(_Gateway(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = SandboxClient(f"127.0.0.1:{port}", api_key=API_KEY)
    try:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(client._transport.channel)
        metadata = (("authorization", f"Bearer {API_KEY}"),)
        request = requests_pb2.GetEnvironmentRequest(environment_id=ENVIRONMENT_ID)
        timeout = client.settings.timeout
        experiment = Experiment(
            client, ExperimentInfo(EXPERIMENT_ID, ENVIRONMENT_ID, ExperimentState.RUNNING)
        )

        def sdk_unary() -> Any:
            return client.get_environment(ENVIRONMENT_ID)

        def raw_unary() -> Any:
            return stub.GetEnvironment(request, timeout=timeout, metadata=metadata)

        def sdk_stream() -> int:
            return sum(1 for _ in experiment.events(follow=False))

        def raw_stream() -> int:
            stream_request = requests_pb2.StreamExperimentEventsRequest(experiment_id=EXPERIMENT_ID)
            return sum(1 for _ in stub.StreamExperimentEvents(stream_request, metadata=metadata))

        for _ in range(3):  # warm up connections and code paths
            _p50_unary(sdk_unary), _p50_unary(raw_unary), sdk_stream(), raw_stream()
        sdk_p50, raw_p50 = [], []
        for round_index in range(UNARY_ROUNDS):
            order = (sdk_unary, raw_unary) if round_index % 2 == 0 else (raw_unary, sdk_unary)
            for call in order:
                (sdk_p50 if call is sdk_unary else raw_p50).append(_p50_unary(call))
        sdk_stream_s, raw_stream_s = [], []
        for round_index in range(STREAM_ROUNDS):
            consumers = (
                (sdk_stream, raw_stream) if round_index % 2 == 0 else (raw_stream, sdk_stream)
            )
            for consume in consumers:
                target = sdk_stream_s if consume is sdk_stream else raw_stream_s
                target.append(_stream_seconds(consume))
    finally:
        client.close()
        server.stop(None)
    unary_sdk = statistics.median(sdk_p50) * 1e6
    unary_raw = statistics.median(raw_p50) * 1e6
    stream_sdk = STREAM_EVENTS / statistics.median(sdk_stream_s)
    stream_raw = STREAM_EVENTS / statistics.median(raw_stream_s)
    return [
        {
            "benchmark": "sdk_unary_get_environment",
            "metric": "p50 latency",
            "value": unary_sdk,
            "baseline": unary_raw,
            "ratio": unary_sdk / unary_raw,
            "unit": "us",
            "goal": "ratio < 1.15 (SDK vs raw stub)",
        },
        {
            "benchmark": "sdk_stream_experiment_events",
            "metric": "events/s",
            "value": stream_sdk,
            "baseline": stream_raw,
            "ratio": stream_raw / stream_sdk,
            "unit": "events/s",
            "goal": "cost ratio (raw/SDK rate) < 1.1",
        },
    ]


def main() -> None:
    """Prints the rows as a table."""
    rows = run()
    print(f"{'benchmark':32} {'metric':12} {'value':>12} {'baseline':>12} {'ratio':>7}  goal")
    for row in rows:
        print(
            f"{row['benchmark']:32} {row['metric']:12} {row['value']:12.1f} "
            f"{row['baseline']:12.1f} {row['ratio']:7.3f}  {row['goal']}"
        )


if __name__ == "__main__":
    main()
