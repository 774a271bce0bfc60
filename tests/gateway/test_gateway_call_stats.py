"""The gateway's call counts and latency histogram, kept as plain numbers, read exactly as
prometheus_client's own Counter and Histogram fed the same calls would be."""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from sandbox_sdk.server.gateway.metrics import _LATENCY_BUCKETS, GatewayMetrics

CALLS = [
    ("GetEnvironment", grpc.StatusCode.OK, 0.0003),
    ("GetEnvironment", grpc.StatusCode.OK, 0.0005),  # on a bound: counted in that bucket
    ("GetEnvironment", grpc.StatusCode.OK, 0.004),
    ("GetEnvironment", grpc.StatusCode.NOT_FOUND, 0.02),
    ("CreateEnvironment", grpc.StatusCode.OK, 75.0),  # past the last bound: +Inf only
]


def _samples(registry: CollectorRegistry) -> set[str]:
    lines = generate_latest(registry).decode().splitlines()
    return {line for line in lines if line.startswith("sandbox_gateway_request")}


def test_call_stats_expose_what_prometheus_client_would() -> None:
    metrics = GatewayMetrics()
    reference = CollectorRegistry()
    requests = Counter("sandbox_gateway_requests", "-", ["method", "code"], registry=reference)
    latency = Histogram(
        "sandbox_gateway_request_duration_seconds",
        "-",
        ["method", "code"],
        buckets=_LATENCY_BUCKETS,
        registry=reference,
    )
    for method, code, seconds in CALLS:
        metrics.observe(method, code, seconds)
        requests.labels(method, code.name).inc()
        latency.labels(method, code.name).observe(seconds)

    ours = _samples(metrics.registry)
    expected = {line for line in _samples(reference) if "_created" not in line}
    assert ours == expected
    assert (
        'sandbox_gateway_request_duration_seconds_bucket{code="OK",le="0.0005",'
        'method="GetEnvironment"} 2.0' in ours
    )
    assert 'sandbox_gateway_requests_total{code="OK",method="GetEnvironment"} 3.0' in ours


def test_call_stats_start_empty() -> None:
    assert _samples(GatewayMetrics().registry) == set()
