"""Starting and stopping an orchestrator: storage, sandboxes, experiments, gRPC."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.ops import (
    MetricsServer,
    add_health_and_reflection,
    mark_not_serving,
    serve_metrics,
)
from sandbox_sdk.server.orchestrator.config import OrchestratorConfig
from sandbox_sdk.server.orchestrator.experiments import ExperimentEngine, ExperimentHandlers
from sandbox_sdk.server.orchestrator.sandbox import EnvironmentHandlers, SandboxManager
from sandbox_sdk.server.orchestrator.servicer import SERVICE, add_orchestrator_service
from sandbox_sdk.server.status import (
    ErrorInterceptor,
    MethodHandler,
    ServerInterceptorBase,
    ServiceError,
)

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]


class InternalTokenInterceptor(ServerInterceptorBase):
    """Admits only callers that present the gateway's internal token."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler:
        if handler_call_details.method.startswith("/grpc."):
            return await continuation(handler_call_details)
        presented = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        value = presented.encode() if isinstance(presented, str) else presented
        if hmac.compare_digest(value, self._expected):
            return await continuation(handler_call_details)
        return _refuse_handler()


def _refuse_handler() -> MethodHandler:
    error = ServiceError(
        grpc.StatusCode.UNAUTHENTICATED,
        ErrorReason.API_KEY_INVALID,
        "this orchestrator only serves its gateway: send the configured internal token",
    )

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(error.code, error.message)

    return grpc.unary_unary_rpc_method_handler(refuse)


@dataclass
class OrchestratorApp:
    """A running orchestrator. Start it with :meth:`start`, stop it with :meth:`stop`."""

    config: OrchestratorConfig
    server: grpc.aio.Server
    database: Database
    sandboxes: SandboxManager
    experiments: ExperimentEngine
    port: int
    metrics: MetricsServer | None
    _health: Any

    @property
    def address(self) -> str:
        """``host:port`` the orchestrator serves on."""
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    @classmethod
    async def start(cls, config: OrchestratorConfig, address: str | None = None) -> OrchestratorApp:
        """Opens storage, recovers state left by a previous run, and starts serving."""
        if address is not None:
            config = config.model_copy(update={"listen": address})
        config.data_dir.mkdir(parents=True, exist_ok=True)
        database = Database(config.database_path)
        registry = CollectorRegistry()
        sandboxes = SandboxManager(
            database,
            config.sandbox,
            config.orchestrator_id,
            config.workspace_root,
            registry=registry,
        )
        experiments = ExperimentEngine(
            database, config.experiments, sandboxes, config.orchestrator_id, registry=registry
        )
        await sandboxes.start()
        await experiments.start()
        interceptors: list[ServerInterceptorBase] = []
        if config.internal_token:
            interceptors.append(InternalTokenInterceptor(config.internal_token))
        interceptors.append(ErrorInterceptor())
        server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
        add_orchestrator_service(
            server, EnvironmentHandlers(sandboxes), ExperimentHandlers(experiments)
        )
        health = await add_health_and_reflection(server, [SERVICE.full_name])
        port = server.add_insecure_port(config.listen)
        await server.start()
        metrics = (
            serve_metrics(config.metrics_port, registry)
            if config.metrics_port is not None
            else None
        )
        log.info("orchestrator %s serving on port %d", config.orchestrator_id, port)
        return cls(config, server, database, sandboxes, experiments, port, metrics, health)

    async def stop(self, grace: float = 5.0) -> None:
        """Stops taking calls, drains in-flight ones for ``grace`` seconds, then shuts down."""
        await mark_not_serving(self._health)
        await self.server.stop(grace)
        await self.experiments.stop()
        await self.sandboxes.stop()
        if self.metrics is not None:
            self.metrics.close()
        self.database.close()
