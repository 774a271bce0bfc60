"""Client-side RPC metrics: latency, retries and errors per method.

Off by default; ``metrics.prometheus`` / ``metrics.opentelemetry`` in the
settings turn them on. Prometheus metrics go to the default registry (expose
them with ``prometheus_client.start_http_server``) and need the ``metrics``
extra (``pip install 'sandbox-sdk[metrics]'``); OpenTelemetry uses the global
meter provider and needs ``opentelemetry-api`` installed.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

from sandbox_sdk.config.settings import MetricsSettings
from sandbox_sdk.errors import ConfigError


class RpcObserver(Protocol):
    """Receives one record per finished call (streams: when the stream ends)."""

    def record(self, method: str, code: str, seconds: float, retries: int) -> None:
        """``code`` is the final status name (``OK`` on success)."""


class PrometheusObserver:
    """Prometheus histogram ``sandbox_client_rpc_duration_seconds`` and counters
    ``sandbox_client_rpc_retries_total`` and ``sandbox_client_rpc_errors_total``."""

    _lock = threading.Lock()
    _metrics: tuple[Any, Any, Any] | None = None

    def __init__(self) -> None:
        self._duration, self._retries, self._errors = self._shared_metrics()

    @classmethod
    def _shared_metrics(cls) -> tuple[Any, Any, Any]:
        # Registered once per process: the default registry rejects duplicates.
        with cls._lock:
            if cls._metrics is None:
                try:
                    from prometheus_client import Counter, Histogram
                except ImportError as error:
                    raise ConfigError(
                        "metrics.prometheus is on but prometheus-client is not installed; "
                        "pip install 'sandbox-sdk[metrics]', or turn the setting off"
                    ) from error
                cls._metrics = (
                    Histogram(
                        "sandbox_client_rpc_duration_seconds",
                        "Duration of SDK calls to the gateway, retries included.",
                        ["method", "code"],
                    ),
                    Counter(
                        "sandbox_client_rpc_retries",
                        "Retried attempts of SDK calls.",
                        ["method"],
                    ),
                    Counter(
                        "sandbox_client_rpc_errors",
                        "SDK calls that failed, by final status code.",
                        ["method", "code"],
                    ),
                )
            return cls._metrics

    def record(self, method: str, code: str, seconds: float, retries: int) -> None:
        """Observes one call."""
        self._duration.labels(method, code).observe(seconds)
        if retries:
            self._retries.labels(method).inc(retries)
        if code != "OK":
            self._errors.labels(method, code).inc()


class OpenTelemetryObserver:
    """OpenTelemetry histogram ``sandbox.client.rpc.duration`` and counters
    ``sandbox.client.rpc.retries`` and ``sandbox.client.rpc.errors``."""

    def __init__(self) -> None:
        try:
            from opentelemetry import metrics
        except ImportError as error:
            raise ConfigError(
                "metrics.opentelemetry is on but opentelemetry-api is not installed; "
                "pip install opentelemetry-api, or turn the setting off"
            ) from error
        meter = metrics.get_meter("sandbox_sdk.client")
        self._duration = meter.create_histogram(
            "sandbox.client.rpc.duration", unit="s", description="Duration of SDK calls"
        )
        self._retries = meter.create_counter(
            "sandbox.client.rpc.retries", description="Retried attempts of SDK calls"
        )
        self._errors = meter.create_counter(
            "sandbox.client.rpc.errors", description="Failed SDK calls"
        )

    def record(self, method: str, code: str, seconds: float, retries: int) -> None:
        """Observes one call."""
        attributes = {"rpc.method": method, "rpc.grpc.status_code": code}
        self._duration.record(seconds, attributes)
        if retries:
            self._retries.add(retries, {"rpc.method": method})
        if code != "OK":
            self._errors.add(1, attributes)


class _Fanout:
    def __init__(self, observers: Sequence[RpcObserver]) -> None:
        self._observers = tuple(observers)

    def record(self, method: str, code: str, seconds: float, retries: int) -> None:
        for observer in self._observers:
            observer.record(method, code, seconds, retries)


def observer_from_settings(settings: MetricsSettings) -> RpcObserver | None:
    """The observer the settings ask for, or ``None`` when metrics are off."""
    observers: list[RpcObserver] = []
    if settings.prometheus:
        observers.append(PrometheusObserver())
    if settings.opentelemetry:
        observers.append(OpenTelemetryObserver())
    if not observers:
        return None
    return observers[0] if len(observers) == 1 else _Fanout(observers)
