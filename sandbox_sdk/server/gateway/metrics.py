"""The gateway's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
_BOUND_LABELS = (*(repr(bound) for bound in _LATENCY_BUCKETS), "+Inf")
_OK = grpc.StatusCode.OK
# One (method, code)'s count per latency bucket (the last one +Inf) and sum of seconds.
_Stats = tuple[list[int], list[float]]


class GatewayMetrics:
    """Requests, latency, streams, auth failures, limits and orchestrator health."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.calls = CallStats()
        self.registry.register(self.calls)
        self.active_streams = Gauge(
            "sandbox_gateway_active_streams",
            "Server-streaming calls open now, by method.",
            ["method"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "sandbox_gateway_auth_failures",
            "Calls refused for missing or bad credentials, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.limited = Counter(
            "sandbox_gateway_limited_requests",
            "Calls refused by a rate limit or quota, by tenant and reason.",
            ["tenant", "reason"],
            registry=self.registry,
        )
        self.orchestrator_up = Gauge(
            "sandbox_gateway_orchestrator_up",
            "1 while the orchestrator passes health checks.",
            ["orchestrator"],
            registry=self.registry,
        )

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """Records one finished call."""
        self.calls.observe(method, code, seconds)

    def auth_failed(self, reason: str) -> None:
        """Counts a refused credential."""
        self.auth_failures.labels(reason).inc()

    def refused(self, tenant: str, reason: str) -> None:
        """Counts a call refused by a rate limit or quota."""
        self.limited.labels(tenant, reason).inc()

    def orchestrator_health(self, orchestrator_id: str, healthy: bool) -> None:
        """Records an orchestrator's health."""
        self.orchestrator_up.labels(orchestrator_id).set(1 if healthy else 0)


class CallStats(Collector):
    """Finished calls and their latency by method and code, exported as the counter
    ``sandbox_gateway_requests_total`` and the histogram
    ``sandbox_gateway_request_duration_seconds``.

    Every call is counted on the event loop, so the counts are plain numbers: a
    prometheus_client child takes a lock per increment, three per call, which cost more
    than the rest of the counting. A scrape reads them from the metrics server's thread;
    it may see one call's latency in the sum and not yet in the buckets, as a scrape
    racing any counter may.
    """

    def __init__(self) -> None:
        self._calls: dict[tuple[str, grpc.StatusCode], _Stats] = {}
        # The same lists for code OK by method alone: a StatusCode's hash is a Python call.
        self._ok: dict[str, _Stats] = {}

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """Counts one finished call that took ``seconds``."""
        if code is _OK:
            stats = self._ok.get(method)
            if stats is None:
                stats = self._ok[method] = self._stats(method, code)
        else:
            stats = self._stats(method, code)
        stats[0][bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        stats[1][0] += seconds

    def _stats(self, method: str, code: grpc.StatusCode) -> _Stats:
        key = (method, code)
        stats = self._calls.get(key)
        if stats is None:
            stats = self._calls[key] = ([0] * (len(_LATENCY_BUCKETS) + 1), [0.0])
        return stats

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        """The two metric families, for a scrape."""
        requests = CounterMetricFamily(
            "sandbox_gateway_requests",
            "Calls finished, by method and status code.",
            labels=["method", "code"],
        )
        latency = HistogramMetricFamily(
            "sandbox_gateway_request_duration_seconds",
            "Time from a call's arrival to its last response, by method and status code.",
            labels=["method", "code"],
        )
        for (method, code), (counts, total) in list(self._calls.items()):
            labels = [method, code.name]
            cumulative, running = [], 0
            for bound, count in zip(_BOUND_LABELS, list(counts), strict=True):
                running += count
                cumulative.append((bound, float(running)))
            requests.add_metric(labels, float(running))
            latency.add_metric(labels, cumulative, total[0])
        yield requests
        yield latency
