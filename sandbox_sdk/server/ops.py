"""Operational endpoints every service serves: health, reflection, Prometheus."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # the public alias health.aio is untyped
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


async def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str]
) -> HealthServicer:
    """Registers grpc.health.v1 (every service SERVING) and server reflection."""
    names = list(service_names)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    return health_servicer


async def mark_not_serving(health_servicer: HealthServicer) -> None:
    """Tells health checkers to stop sending new work, before a graceful stop."""
    await health_servicer.enter_graceful_shutdown()


def serve_metrics(port: int, registry: CollectorRegistry, host: str = "127.0.0.1") -> MetricsServer:
    """Serves ``registry`` in Prometheus text format on ``host:port`` (0 picks a free port)."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)


class MetricsServer:
    """A running Prometheus exposition endpoint."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        """The bound port."""
        port: int = self._server.server_port
        return port

    def close(self) -> None:
        """Stops serving and waits for the serving thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
