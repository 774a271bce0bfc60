"""The gateway's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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


class GatewayMetrics:
    """Requests, latency, streams, auth failures, limits and orchestrator health."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "sandbox_gateway_requests",
            "Calls finished, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sandbox_gateway_request_duration_seconds",
            "Time from a call's arrival to its last response, by method and status code.",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
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
        self._children: dict[tuple[str, grpc.StatusCode], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """Records one finished call."""
        key = (method, code)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(method, code.name),
                self.latency.labels(method, code.name),
            )
        children[0].inc()
        children[1].observe(seconds)

    def auth_failed(self, reason: str) -> None:
        """Counts a refused credential."""
        self.auth_failures.labels(reason).inc()

    def refused(self, tenant: str, reason: str) -> None:
        """Counts a call refused by a rate limit or quota."""
        self.limited.labels(tenant, reason).inc()

    def orchestrator_health(self, orchestrator_id: str, healthy: bool) -> None:
        """Records an orchestrator's health."""
        self.orchestrator_up.labels(orchestrator_id).set(1 if healthy else 0)
