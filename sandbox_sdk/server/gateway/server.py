"""Starting and stopping a gateway: key store, orchestrator pool, gRPC server, metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from redis.asyncio import Redis

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server import local_socket
from sandbox_sdk.server.gateway.admin import ApiKeyAdmin
from sandbox_sdk.server.gateway.api_keys import ApiKeyStore
from sandbox_sdk.server.gateway.archived_experiments import ArchivedExperiments
from sandbox_sdk.server.gateway.authentication import Authenticator
from sandbox_sdk.server.gateway.config import GatewayConfig
from sandbox_sdk.server.gateway.methods import GATEWAY_SERVICE
from sandbox_sdk.server.gateway.metrics import GatewayMetrics
from sandbox_sdk.server.gateway.orchestrators import (
    MAX_MESSAGE_BYTES,
    OrchestratorLink,
    OrchestratorPool,
)
from sandbox_sdk.server.gateway.quotas import QuotaEnforcer
from sandbox_sdk.server.gateway.rate_limits import RateLimiter
from sandbox_sdk.server.gateway.redis_connection import open_redis
from sandbox_sdk.server.gateway.registry_watch import RegistryWatch
from sandbox_sdk.server.gateway.revocations import RevocationFeed
from sandbox_sdk.server.gateway.service import GatewayService
from sandbox_sdk.server.gateway.shared_rate_limits import RedisRateLimiter
from sandbox_sdk.server.keepalive import SERVER_KEEPALIVE_OPTIONS
from sandbox_sdk.server.ops import (
    MetricsServer,
    add_health_and_reflection,
    mark_not_serving,
    serve_metrics,
)
from sandbox_sdk.server.status import ErrorStatusHandlers
from sandbox_sdk.server.store.archive import ExperimentArchive
from sandbox_sdk.server.store.backends import SqlBackend, is_postgres_url
from sandbox_sdk.server.store.registry import OrchestratorRegistry
from sandbox_sdk.server.store.reservations import SharedReservations
from sandbox_sdk.server.tls import server_credentials

log = logging.getLogger(__name__)

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    *SERVER_KEEPALIVE_OPTIONS,
]


@dataclass
class GatewayServer:
    """A running gateway. Start it with :meth:`start`, stop it with :meth:`stop`."""

    config: GatewayConfig
    server: grpc.aio.Server
    database: SqlBackend
    keys: ApiKeyStore
    authenticator: Authenticator
    pool: OrchestratorPool
    metrics: GatewayMetrics
    port: int
    metrics_port: int | None
    _health: Any
    _metrics_server: MetricsServer | None
    _revocations: RevocationFeed | None = None
    _redis: Redis | None = None
    _reservations: SharedReservations | None = None
    _registry_watch: RegistryWatch | None = None

    @property
    def address(self) -> str:
        """``host:port`` the gateway serves on."""
        return f"{self.config.listen.rsplit(':', 1)[0]}:{self.port}"

    @classmethod
    async def start(
        cls, config: GatewayConfig, in_process: Sequence[OrchestratorLink] = ()
    ) -> GatewayServer:
        """Opens the key store, checks the orchestrators and starts serving.

        ``in_process`` links (see ``in_process.py``) reach the configured
        orchestrators with their ids in this process instead of over gRPC.
        """
        keys = ApiKeyStore.open(
            config.database_url, config.db_path, cache_seconds=config.key_cache_seconds
        )
        database = keys.backend
        reservations = _shared_reservations(config.database_url)
        if reservations is not None:
            await reservations.open()
        metrics = GatewayMetrics()
        authenticator = Authenticator(keys, on_failure=metrics.auth_failed)
        pool = OrchestratorPool(
            [] if config.follows_registry else config.orchestrators,
            internal_token=config.internal_token,
            tls=config.orchestrator_tls,
            health_interval=config.health_check_interval_seconds,
            capacity_ttl=config.capacity_cache_seconds,
            on_health_change=metrics.orchestrator_health,
            in_process=in_process,
        )
        await pool.start()
        registry_watch = await _watch_registry(config, pool)
        redis = open_redis(config.redis_url) if config.redis_url is not None else None
        revocations = RevocationFeed(redis, keys) if redis is not None else None
        if revocations is not None:
            await revocations.start()
        service = GatewayService(
            pool=pool,
            authenticator=authenticator,
            rate_limiter=(
                RedisRateLimiter(config.limits, redis)
                if redis is not None
                else RateLimiter(config.limits)
            ),
            quotas=QuotaEnforcer(
                pool,
                config.limits,
                on_refused=lambda tenant: metrics.refused(tenant, ErrorReason.QUOTA_EXCEEDED),
                shared=reservations,
            ),
            admin=ApiKeyAdmin(
                keys, on_revoked=revocations.announce if revocations is not None else _no_one
            ),
            metrics=metrics,
            retry=config.retry,
            archived=ArchivedExperiments(ExperimentArchive(database)),
        )
        server = grpc.aio.server(options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers((ErrorStatusHandlers(service),))
        health = await add_health_and_reflection(server, [GATEWAY_SERVICE.full_name])
        if config.tls is not None:
            port = server.add_secure_port(config.listen, server_credentials(config.tls, "tls"))
        else:
            port = server.add_insecure_port(config.listen)
        if config.unix_socket is not None:
            server.add_insecure_port(local_socket.claim(config.unix_socket))
        await server.start()
        if config.unix_socket is not None:
            local_socket.restrict(config.unix_socket)
        metrics_server = (
            serve_metrics(config.metrics_port, metrics.registry, config.metrics_host)
            if config.metrics_port is not None
            else None
        )
        metrics_port = metrics_server.port if metrics_server is not None else None
        log.info(
            "gateway serving on port %d and unix socket %s (tls=%s, orchestrators=%s,"
            " metrics_port=%s)",
            port,
            config.unix_socket or "-",
            config.tls is not None,
            ",".join(link.id for link in pool.links),
            metrics_port,
        )
        return cls(
            config,
            server,
            database,
            keys,
            authenticator,
            pool,
            metrics,
            port,
            metrics_port,
            health,
            metrics_server,
            _revocations=revocations,
            _redis=redis,
            _reservations=reservations,
            _registry_watch=registry_watch,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stops taking calls, lets in-flight ones finish for ``grace`` seconds, shuts down."""
        await mark_not_serving(self._health)
        await self.server.stop(self.config.shutdown_grace_seconds if grace is None else grace)
        if self.config.unix_socket is not None:
            local_socket.release(self.config.unix_socket)
        if self._registry_watch is not None:
            await self._registry_watch.stop()
        await self.pool.stop()
        if self._revocations is not None:
            await self._revocations.stop()
        if self._redis is not None:
            await self._redis.aclose()
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self._reservations is not None:
            await self._reservations.close()
        self.database.close()


def _no_one(key_id: str) -> None:
    """Without Redis no other gateway is told: theirs see a revocation when their cache expires."""


def _shared_reservations(database_url: str | None) -> SharedReservations | None:
    """Quota reservations shared with the other gateways, when they share PostgreSQL."""
    if database_url and is_postgres_url(database_url):
        return SharedReservations(database_url)
    return None


async def _watch_registry(config: GatewayConfig, pool: OrchestratorPool) -> RegistryWatch | None:
    """Follows the orchestrator registry, when the configuration asks for it."""
    if not config.follows_registry or config.database_url is None:
        return None
    registry = await asyncio.to_thread(OrchestratorRegistry.open, config.database_url)
    watch = RegistryWatch(registry, pool, config.registry_poll_seconds)
    await watch.start()
    return watch
