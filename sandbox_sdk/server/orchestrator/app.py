"""Starting and stopping an orchestrator: storage, sandboxes, experiments, gRPC."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from sandbox_sdk import __version__
from sandbox_sdk.errors import ConfigError
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.keepalive import SERVER_KEEPALIVE_OPTIONS
from sandbox_sdk.server.ops import (
    MetricsServer,
    add_health_and_reflection,
    mark_not_serving,
    serve_metrics,
)
from sandbox_sdk.server.orchestrator.config import OrchestratorConfig
from sandbox_sdk.server.orchestrator.experiments import ExperimentEngine, ExperimentHandlers
from sandbox_sdk.server.orchestrator.internal_auth import (
    InternalTokenInterceptor,
    internal_authentication_problem,
)
from sandbox_sdk.server.orchestrator.registration import Registration
from sandbox_sdk.server.orchestrator.sandbox import EnvironmentHandlers, SandboxManager
from sandbox_sdk.server.orchestrator.servicer import (
    SERVICE,
    RpcHandler,
    add_orchestrator_service,
    handler_table,
)
from sandbox_sdk.server.orchestrator.templates.cache import TemplateCache
from sandbox_sdk.server.orchestrator.templates.handlers import TemplateService
from sandbox_sdk.server.orchestrator.templates.records import TemplateRecords
from sandbox_sdk.server.status import ErrorInterceptor, ServerInterceptorBase
from sandbox_sdk.server.store.archive import ExperimentArchive
from sandbox_sdk.server.store.registry import (
    Announcement,
    Capacity,
    Labels,
    OrchestratorRegistry,
)
from sandbox_sdk.server.tls import server_credentials

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    *SERVER_KEEPALIVE_OPTIONS,
]


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
    registration: Registration | None = None
    archive: ExperimentArchive | None = None
    templates: TemplateService | None = None

    @property
    def address(self) -> str:
        """``host:port`` the orchestrator serves on."""
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    @classmethod
    async def start(cls, config: OrchestratorConfig, address: str | None = None) -> OrchestratorApp:
        """Opens storage, recovers state left by a previous run, and starts serving.

        Raises :class:`ConfigError` without starting anything when the
        orchestrator would serve without internal authentication (see
        :mod:`~sandbox_sdk.server.orchestrator.internal_auth`), also when
        ``address`` overrides the configured ``listen``.
        """
        if address is not None:
            config = config.model_copy(update={"listen": address})
        problem = internal_authentication_problem(config)
        if problem is not None:
            raise ConfigError(problem)
        credentials = server_credentials(config.tls, "tls") if config.tls is not None else None
        config.data_dir.mkdir(parents=True, exist_ok=True)
        database = Database(config.database_path)
        archive = (
            await asyncio.to_thread(ExperimentArchive.open, config.archive.database_url)
            if config.archive is not None
            else None
        )
        registry = CollectorRegistry()
        template_cache = TemplateCache(config.template_root)
        sandboxes = SandboxManager(
            database,
            config.sandbox,
            config.orchestrator_id,
            config.workspace_root,
            registry=registry,
            templates=template_cache,
        )
        experiments = ExperimentEngine(
            database,
            config.experiments,
            sandboxes.port,
            config.orchestrator_id,
            registry=registry,
            archive=archive,
        )
        await sandboxes.start()
        templates = TemplateService(
            TemplateRecords(database),
            template_cache,
            sandboxes,
            config.orchestrator_id,
            config.data_dir / "template-archives",
            config.templates.snapshot_quota_bytes,
        )
        await templates.start([(p.name, p.spec) for p in config.templates.public])
        await experiments.start()
        interceptors: list[ServerInterceptorBase] = []
        if config.internal_token:
            interceptors.append(InternalTokenInterceptor(config.internal_token))
        interceptors.append(ErrorInterceptor())
        server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
        add_orchestrator_service(server, handlers_of(sandboxes, experiments, templates))
        health = await add_health_and_reflection(server, [SERVICE.full_name])
        if credentials is not None:
            port = server.add_secure_port(config.listen, credentials)
        else:
            port = server.add_insecure_port(config.listen)
        await server.start()
        metrics = (
            serve_metrics(config.metrics_port, registry)
            if config.metrics_port is not None
            else None
        )
        log.info("orchestrator %s serving on port %d", config.orchestrator_id, port)
        app = cls(
            config,
            server,
            database,
            sandboxes,
            experiments,
            port,
            metrics,
            health,
            archive=archive,
            templates=templates,
        )
        if config.registry is not None:
            app.registration = await asyncio.to_thread(app.open_registration)
            await app.registration.start()
        return app

    def handlers(self) -> dict[str, RpcHandler]:
        """Every OrchestratorService RPC's handler (the embedded gateway calls them directly)."""
        return handlers_of(self.sandboxes, self.experiments, self.templates)

    def open_registration(self) -> Registration:
        """The orchestrator's registration in the configured registry (blocking: migrates)."""
        settings = self.config.registry
        if settings is None:
            raise ConfigError("registry: not configured")
        sandbox = self.config.sandbox
        announcement = Announcement(
            id=self.config.orchestrator_id,
            address=settings.advertise_address or self.address,
            capacity=Capacity(
                sandbox.max_environments, sandbox.cpu_cores_total, sandbox.memory_bytes_total
            ),
            labels=Labels(settings.zone, settings.machine_class),
            version=__version__,
        )
        registry = OrchestratorRegistry.open(settings.database_url)
        return Registration(registry, announcement, settings.lease_seconds)

    async def stop(self, grace: float = 5.0) -> None:
        """Stops taking calls, drains in-flight ones for ``grace`` seconds, then shuts down.

        A registered orchestrator leaves the registry first, so gateways stop placing here.
        """
        if self.registration is not None:
            await self.registration.stop()
        await mark_not_serving(self._health)
        await self.server.stop(grace)
        await self.experiments.stop()
        if self.templates is not None:
            await self.templates.stop()
        await self.sandboxes.stop()
        if self.archive is not None:
            await asyncio.to_thread(self.archive.close)
        if self.metrics is not None:
            self.metrics.close()
        self.database.close()


def handlers_of(
    sandboxes: SandboxManager, experiments: ExperimentEngine, templates: TemplateService | None
) -> dict[str, RpcHandler]:
    """The handler table, with CreateEnvironment resolving templates when there are any."""
    table = handler_table(
        EnvironmentHandlers(sandboxes, experiments.store.live_counts),
        ExperimentHandlers(experiments),
        templates,
    )
    if templates is not None:
        table["CreateEnvironment"] = templates.create_environment(table["CreateEnvironment"])
    return table
