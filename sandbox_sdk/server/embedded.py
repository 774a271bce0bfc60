"""Running the services: embedded (a gateway and one orchestrator in one process) or apart.

``sandbox-sdk serve`` runs :func:`serve_embedded`; ``sandbox-gateway`` and
``sandbox-orchestrator`` run :func:`serve_gateway` and :func:`serve_orchestrator`
for deployments with several orchestrators. All read the same YAML file::

    gateway:          # GatewayConfig
      listen: 0.0.0.0:50051
      orchestrators: [{id: o1, address: 10.0.0.5:50061}]
      internal_token: change-me
    orchestrator:     # OrchestratorConfig
      orchestrator_id: o1
      listen: 0.0.0.0:50061
      data_dir: /var/lib/sandbox-sdk/orchestrator
      internal_token: change-me
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import stat
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandbox_sdk.config.local_server import socket_path
from sandbox_sdk.errors import ConfigError
from sandbox_sdk.server import local_socket
from sandbox_sdk.server.garbage import freeze_startup_objects
from sandbox_sdk.server.gateway.api_keys import ApiKeyStore
from sandbox_sdk.server.gateway.bootstrap import ensure_admin_key
from sandbox_sdk.server.gateway.config import GatewayConfig, default_data_dir
from sandbox_sdk.server.gateway.in_process import InProcessLink
from sandbox_sdk.server.gateway.server import GatewayServer
from sandbox_sdk.server.orchestrator.app import OrchestratorApp
from sandbox_sdk.server.orchestrator.config import OrchestratorConfig
from sandbox_sdk.server.store.registry import OrchestratorRegistry

log = logging.getLogger(__name__)

EMBEDDED_ORCHESTRATOR_ID = "o1"
_LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


class ServerConfigFile(BaseModel):
    """The ``--config`` YAML file: a ``gateway`` and an ``orchestrator`` section."""

    model_config = ConfigDict(extra="forbid")

    gateway: dict[str, Any] = Field(default_factory=dict)
    orchestrator: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | str | None) -> ServerConfigFile:
        """Reads the file; no path means every default."""
        if path is None:
            return cls()
        loaded = yaml.safe_load(Path(path).expanduser().read_text()) or {}
        return cls.model_validate(loaded)


_Section = TypeVar("_Section", bound=BaseModel)


def validated(model: type[_Section], values: dict[str, Any], section: str) -> _Section:
    """``model`` from ``values``, or :class:`ConfigError` naming each bad key of ``section``."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        problems = [
            f"  {'.'.join([section, *map(str, problem['loc'])])}: "
            + str(problem["msg"]).removeprefix("Value error, ")
            for problem in error.errors()
        ]
        raise ConfigError("invalid server configuration:\n" + "\n".join(problems)) from None


@dataclass
class EmbeddedServer:
    """A gateway and the one orchestrator behind it, in this process."""

    gateway: GatewayServer
    orchestrator: OrchestratorApp
    data_dir: Path
    admin_key_path: Path

    @property
    def port(self) -> int:
        """The gateway's port."""
        return self.gateway.port

    @property
    def address(self) -> str:
        """The gateway's ``host:port``."""
        return self.gateway.address

    @property
    def local_target(self) -> str:
        """The gateway's Unix socket as a gRPC target: the SDK's default for this data dir."""
        return f"unix:{socket_path(self.data_dir)}"

    async def stop(self, grace: float = 5.0) -> None:
        """Drains calls in flight for up to ``grace`` seconds, then stops both services."""
        try:
            await self.gateway.stop(grace)
        finally:
            await self.orchestrator.stop(grace)


def _resolve_data_dir(data_dir: Path | str | None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def private_data_dir(root: Path) -> Path:
    """Creates ``root`` (mode 0700), or makes an existing one 0700; it must be ours.

    The admin key and the gateway's Unix socket live in it: whoever can enter
    it could take the key, and whoever can write it could put their own socket
    where the SDK sends that key.
    """
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = root.stat()
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"the data dir {root} belongs to uid {info.st_uid}, not to this user; "
            "use a data dir of your own (--data-dir or SANDBOX_DATA_DIR)"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode != 0o700:
        log.warning("data dir %s had mode %04o; setting it to 0700", root, mode)
        root.chmod(0o700)
    return root


def orchestrator_link(app: OrchestratorApp) -> InProcessLink:
    """A gateway link that calls ``app``'s handlers in this process."""
    return InProcessLink(app.config.orchestrator_id, app.address, app.handlers())


async def run_embedded(
    host: str = "127.0.0.1",
    port: int = 50051,
    data_dir: Path | str | None = None,
    config_path: Path | str | None = None,
    *,
    in_process: bool = True,
) -> EmbeddedServer:
    """Starts an orchestrator on 127.0.0.1 (a free port) and a gateway on ``host:port``.

    ``data_dir`` defaults to ``$SANDBOX_DATA_DIR`` or ``~/.sandbox-sdk``; the
    orchestrator keeps its data in ``<data_dir>/orchestrator``, the gateway its
    key store in ``<data_dir>/gateway.db``, and the admin key is in
    ``<data_dir>/admin.key`` (created on first start, reused after). The data
    dir is made private (mode 0700), and the gateway also serves on the Unix
    socket ``<data_dir>/gateway.sock`` (mode 0600): the SDK's default target,
    and the only one it sends the admin key to by itself. Values in the
    config file's sections apply, except the addresses, which are the
    arguments' (the orchestrator is never exposed beyond loopback).

    With ``in_process`` (the default) the gateway calls the orchestrator's
    handlers directly (:class:`InProcessLink`) instead of over a loopback gRPC
    channel, which saves a gRPC hop per call; the orchestrator still serves
    its loopback port. ``in_process=False`` keeps the gRPC hop, as between
    separate processes.
    """
    root = private_data_dir(_resolve_data_dir(data_dir))
    # Before anything else: a server already serving this data dir stays undisturbed.
    local_socket.claim(socket_path(root))
    sections = ServerConfigFile.load(config_path)
    orchestrator_config = validated(
        OrchestratorConfig,
        {
            "orchestrator_id": EMBEDDED_ORCHESTRATOR_ID,
            "data_dir": root / "orchestrator",
            "internal_token": secrets.token_urlsafe(32),
            **sections.orchestrator,
            "listen": "127.0.0.1:0",
        },
        "orchestrator",
    )
    orchestrator = await OrchestratorApp.start(orchestrator_config, "127.0.0.1:0")
    try:
        gateway_config = validated(
            GatewayConfig,
            {
                "db_path": root / "gateway.db",
                "admin_key_path": root / "admin.key",
                **sections.gateway,
                "listen": f"{host}:{port}",
                "unix_socket": socket_path(root),
                "orchestrators": [
                    {"id": orchestrator_config.orchestrator_id, "address": orchestrator.address}
                ],
                "internal_token": orchestrator_config.internal_token,
            },
            "gateway",
        )
        links = [orchestrator_link(orchestrator)] if in_process else []
        gateway = await GatewayServer.start(gateway_config, links)
    except BaseException:
        await orchestrator.stop(0)
        raise
    admin_key_path = gateway_config.resolved_admin_key_path
    ensure_admin_key(gateway.authenticator, gateway.keys, admin_key_path)
    return EmbeddedServer(gateway, orchestrator, root, admin_key_path)


class _Stoppable(Protocol):
    async def stop(self, grace: float) -> None: ...


_Service = TypeVar("_Service", bound=_Stoppable)


ACCESS_LOG_VARIABLE = "SANDBOX_SDK_ACCESS_LOG"


def configure_logging(level: int = logging.INFO) -> None:
    """key=value log lines on stderr.

    The gateway's access log (one line per call: method, code, tenant, request id, duration)
    is at DEBUG, so it costs nothing unless asked for: ``SANDBOX_SDK_ACCESS_LOG=1`` turns it
    on whatever ``level`` is.
    """
    logging.basicConfig(level=level, format=_LOG_FORMAT, stream=sys.stderr)
    if os.environ.get(ACCESS_LOG_VARIABLE, "").lower() in ("1", "true", "yes", "on"):
        logging.getLogger("sandbox_sdk.server.gateway.access").setLevel(logging.DEBUG)


async def _run_until_signalled(
    start: Callable[[], Awaitable[_Service]],
    ready_line: Callable[[_Service], str],
    grace: float,
) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    service = await start()
    freeze_startup_objects()
    print(ready_line(service), flush=True)
    try:
        await stopping.wait()
        log.info("stopping: draining calls in flight for up to %.1fs", grace)
    finally:
        await service.stop(grace)


def serve_embedded(
    host: str = "127.0.0.1",
    port: int = 50051,
    data_dir: Path | str | None = None,
    config_path: Path | str | None = None,
) -> None:
    """Runs :func:`run_embedded` until SIGINT or SIGTERM, then drains and stops."""
    configure_logging()
    grace = validated(
        GatewayConfig, ServerConfigFile.load(config_path).gateway, "gateway"
    ).shutdown_grace_seconds

    def ready(server: EmbeddedServer) -> str:
        return f"sandbox-sdk serving on {host}:{server.port} (data dir {server.data_dir})"

    asyncio.run(
        _run_until_signalled(lambda: run_embedded(host, port, data_dir, config_path), ready, grace)
    )


def serve_gateway(config_path: Path | str | None = None) -> None:
    """Runs a gateway alone, in front of the orchestrators its config lists."""
    configure_logging()
    config = validated(GatewayConfig, ServerConfigFile.load(config_path).gateway, "gateway")

    async def start() -> GatewayServer:
        gateway = await GatewayServer.start(config)
        ensure_admin_key(gateway.authenticator, gateway.keys, config.resolved_admin_key_path)
        return gateway

    def ready(gateway: GatewayServer) -> str:
        fronted = ", ".join(f"{o.id}@{o.address}" for o in config.orchestrators)
        return (
            f"sandbox-sdk gateway serving on {gateway.address} (orchestrators {fronted};"
            f" admin key in {config.resolved_admin_key_path})"
        )

    asyncio.run(_run_until_signalled(start, ready, config.shutdown_grace_seconds))


def migrate_gateway(config_path: Path | str | None = None) -> None:
    """Brings the gateway's store (its database_url, or its SQLite file) to the newest schema."""
    configure_logging()
    config = validated(GatewayConfig, ServerConfigFile.load(config_path).gateway, "gateway")
    ApiKeyStore.open(config.database_url, config.db_path).close()
    print("sandbox-gateway: the store's schema is up to date")


def drain_orchestrator(config_path: Path | str | None = None) -> None:
    """Marks the configured orchestrator draining in the registry: no new environments."""
    configure_logging()
    config = validated(
        OrchestratorConfig,
        {
            "data_dir": default_data_dir() / "orchestrator",
            **ServerConfigFile.load(config_path).orchestrator,
        },
        "orchestrator",
    )
    if config.registry is None:
        raise ConfigError("orchestrator: drain needs registry.database_url, where it registered")
    registry = OrchestratorRegistry.open(config.registry.database_url)
    try:
        found = registry.drain(config.orchestrator_id)
    finally:
        registry.close()
    if not found:
        raise ConfigError(f"orchestrator {config.orchestrator_id} is not in the registry")
    print(
        f"sandbox-orchestrator: {config.orchestrator_id} is draining; gateways place no new"
        " environments on it and its own keep running"
    )


def serve_orchestrator(config_path: Path | str | None = None) -> None:
    """Runs an orchestrator alone, for a gateway elsewhere to front."""
    configure_logging()
    config = validated(
        OrchestratorConfig,
        {
            "data_dir": default_data_dir() / "orchestrator",
            **ServerConfigFile.load(config_path).orchestrator,
        },
        "orchestrator",
    )

    def ready(app: OrchestratorApp) -> str:
        return (
            f"sandbox-sdk orchestrator {config.orchestrator_id} serving on {app.address}"
            f" (data dir {config.data_dir})"
        )

    asyncio.run(
        _run_until_signalled(lambda: OrchestratorApp.start(config, config.listen), ready, 5.0)
    )
