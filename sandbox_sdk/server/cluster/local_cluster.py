"""A whole cluster on this machine: PostgreSQL, Redis, gateways and orchestrators as processes.

:class:`LocalCluster` starts a throwaway PostgreSQL (the gateways' shared store and
the orchestrator registry) and redis-server (shared rate limits and revocations),
migrates the store, then starts ``sandbox-orchestrator`` processes that register
themselves with a lease and ``sandbox-gateway`` processes that follow the
registry, each on its own loopback port with its own config file, data directory
and log file in one temporary directory. It waits until every server answers
its gRPC health check and every orchestrator is live in the registry.

:meth:`LocalCluster.stop` stops everything and removes the directory, also when
starting failed halfway. An orchestrator that was killed is started once more
first, so that it ends what its environments left behind (processes, cgroups,
mounts) as it does after any crash, and then stopped cleanly.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandbox_sdk.config.targets import join_addresses
from sandbox_sdk.server.cluster.postgres import PostgresServer, free_port
from sandbox_sdk.server.cluster.redis import RedisServer

START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 60.0
DATABASE = "sandbox"
_POLL_SECONDS = 0.1

Kind = Literal["gateway", "orchestrator"]

# The servers are started by the same interpreter as this module, through the same
# functions as the console scripts (which may not be on PATH, e.g. in a venv).
_ENTRY = "from sandbox_sdk.cli.entry_points import {function}; {function}()"


class ClusterError(RuntimeError):
    """A server of the cluster did not start; the message ends with the end of its log."""


@dataclass
class ServerProcess:
    """One gateway or orchestrator process, restartable on the same port and config."""

    name: str
    kind: Kind
    address: str
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id of the current (or last) process."""
        return None if self.process is None else self.process.pid

    def command(self, *arguments: str) -> list[str]:
        """The command line of this server's program with ``arguments``."""
        function = "gateway_main" if self.kind == "gateway" else "orchestrator_main"
        return [sys.executable, "-c", _ENTRY.format(function=function), *arguments]

    def start(self) -> None:
        """Starts the process (not waiting for it to serve); its output goes to ``log_path``."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command("--config", str(self.config_path)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_server_environment(),
                # Its own session: a Ctrl-C at the terminal reaches the cluster's owner,
                # which stops the servers in order, not every server at once.
                start_new_session=True,
            )

    def send_signal(self, signum: int) -> None:
        """Sends ``signum`` to the process if it is alive."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """Waits for the process to end (SIGKILL after ``timeout``); its exit status."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _server_environment() -> dict[str, str]:
    # The servers get their settings from their config files only.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def health_serving(address: str, timeout: float = 1.0) -> bool:
    """Whether the gRPC server at ``address`` answers its health check with SERVING."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


class LocalCluster:
    """PostgreSQL, Redis, ``gateways`` gateways and ``orchestrators`` orchestrators on loopback.

    Gateways are named ``g1``, ``g2``, ...; orchestrators ``o1``, ``o2``, ... (also
    their orchestrator ids, the middle part of the ids they assign). Use it as a
    context manager, or call :meth:`start` and then :meth:`stop`.

    Args:
        gateways, orchestrators: how many of each.
        directory: where the cluster's temporary directory is made (the system's
            temp dir by default); removed by :meth:`stop`.
        lease_seconds: the orchestrators' registry lease; a killed orchestrator is
            reported lost after at most this long.
        orchestrator_settings: extra keys of every orchestrator's config section
            (for example ``{"sandbox": {"max_environments": 8}}``).
        gateway_settings: extra keys of every gateway's config section.
    """

    def __init__(
        self,
        gateways: int = 2,
        orchestrators: int = 3,
        *,
        directory: Path | None = None,
        lease_seconds: float = 10.0,
        orchestrator_settings: Mapping[str, Any] | None = None,
        gateway_settings: Mapping[str, Any] | None = None,
    ) -> None:
        if gateways < 1 or orchestrators < 1:
            raise ValueError("a cluster needs at least one gateway and one orchestrator")
        self.gateway_count = gateways
        self.orchestrator_count = orchestrators
        self.lease_seconds = lease_seconds
        self._parent = directory
        self._orchestrator_settings = dict(orchestrator_settings or {})
        self._gateway_settings = dict(gateway_settings or {})
        self.directory: Path | None = None
        self.postgres = PostgresServer()
        self.redis: RedisServer | None = None
        self.database_url = ""
        self.internal_token = secrets.token_urlsafe(32)
        self.servers: dict[str, ServerProcess] = {}
        self._killed: set[str] = set()

    # -- what a client needs ----------------------------------------------------------------

    @property
    def gateways(self) -> list[ServerProcess]:
        """The gateways, in order."""
        return [server for server in self.servers.values() if server.kind == "gateway"]

    @property
    def orchestrators(self) -> list[ServerProcess]:
        """The orchestrators, in order."""
        return [server for server in self.servers.values() if server.kind == "orchestrator"]

    @property
    def gateway_addresses(self) -> list[str]:
        """``host:port`` of each gateway."""
        return [server.address for server in self.gateways]

    @property
    def target(self) -> str:
        """The SDK target listing every gateway (``SANDBOX_TARGET``): round-robin, failover."""
        return join_addresses(self.gateway_addresses)

    @property
    def admin_key_path(self) -> Path:
        """The file holding the bootstrap operator key (tenant ``default``) of every gateway."""
        return self._directory() / "admin.key"

    @property
    def admin_key(self) -> str:
        """The bootstrap operator key; it creates tenants' keys (``sandbox-sdk keys create``)."""
        return self.admin_key_path.read_text().strip()

    @property
    def redis_url(self) -> str:
        """The Redis the gateways share."""
        if self.redis is None:
            raise ClusterError("the cluster is not started")
        return self.redis.url

    # -- start ------------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, progress: Callable[[str], None] = lambda line: None) -> None:
        """Starts everything and waits until it serves; on any failure stops what started.

        ``progress`` is told each step. Raises :class:`ClusterError` (with the log of
        the server that failed), or the PostgreSQL or Redis error.
        """
        try:
            self._start(progress)
        except BaseException:
            self.stop()
            raise

    def _start(self, progress: Callable[[str], None]) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="sandbox-cluster-", dir=self._parent))
        progress("starting PostgreSQL")
        self.postgres.start()
        self.database_url = self.postgres.create_database(DATABASE)
        progress("starting redis-server")
        self.redis = RedisServer(self.directory / "redis")
        self.redis.start()
        for index in range(1, self.orchestrator_count + 1):
            self._add_orchestrator(f"o{index}")
        for index in range(1, self.gateway_count + 1):
            self._add_gateway(f"g{index}")
        progress("migrating the shared store")
        self._migrate(self.gateways[0])
        progress(f"starting {self.orchestrator_count} orchestrators")
        for server in self.orchestrators:
            server.start()
        for server in self.orchestrators:
            self._wait_serving(server)
        self._wait_registered()
        # One after the other: the first writes the operator key, the others reuse it.
        progress(f"starting {self.gateway_count} gateways")
        for server in self.gateways:
            server.start()
            self._wait_serving(server)

    def _directory(self) -> Path:
        if self.directory is None:
            raise ClusterError("the cluster is not started")
        return self.directory

    def _add_orchestrator(self, name: str) -> None:
        address = f"127.0.0.1:{free_port()}"
        section = {
            "orchestrator_id": name,
            "data_dir": str(self._directory() / name),
            "listen": address,
            "internal_token": self.internal_token,
            "registry": {"database_url": self.database_url, "lease_seconds": self.lease_seconds},
            "archive": {"database_url": self.database_url},
            **self._orchestrator_settings,
        }
        self._add(ServerProcess(name, "orchestrator", address, *self._files(name)), section)

    def _add_gateway(self, name: str) -> None:
        address = f"127.0.0.1:{free_port()}"
        section = {
            "listen": address,
            "orchestrators": [],
            "registry": True,
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "internal_token": self.internal_token,
            "db_path": str(self._directory() / name / "gateway.db"),
            "admin_key_path": str(self.admin_key_path),
            "registry_poll_seconds": 0.5,
            "health_check_interval_seconds": 0.5,
            "shutdown_grace_seconds": 2.0,
            **self._gateway_settings,
        }
        (self._directory() / name).mkdir(mode=0o700)
        self._add(ServerProcess(name, "gateway", address, *self._files(name)), section)

    def _files(self, name: str) -> tuple[Path, Path]:
        return self._directory() / f"{name}.yaml", self._directory() / f"{name}.log"

    def _add(self, server: ServerProcess, section: dict[str, Any]) -> None:
        server.config_path.write_text(yaml.safe_dump({server.kind: section}, sort_keys=False))
        server.config_path.chmod(0o600)  # it holds the internal token
        self.servers[server.name] = server

    def _migrate(self, gateway: ServerProcess) -> None:
        done = subprocess.run(
            gateway.command("migrate", "--config", str(gateway.config_path)),
            capture_output=True,
            text=True,
            env=_server_environment(),
            timeout=START_TIMEOUT_SECONDS,
            check=False,
        )
        if done.returncode != 0:
            raise ClusterError(f"migrating the store failed:\n{done.stdout}{done.stderr}")

    def _wait_serving(self, server: ServerProcess) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not health_serving(server.address):
            if not server.running:
                raise ClusterError(
                    f"{server.kind} {server.name} exited at start; {server.log_path}:\n"
                    + server.log_tail()
                )
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{server.kind} {server.name} did not serve on {server.address} within"
                    f" {START_TIMEOUT_SECONDS:.0f}s; {server.log_path}:\n" + server.log_tail()
                )
            time.sleep(_POLL_SECONDS)

    def _wait_registered(self) -> None:
        expected = {server.name for server in self.orchestrators if server.running}
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not expected <= self.live_orchestrators():
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"orchestrators {sorted(expected - self.live_orchestrators())} did not"
                    " register in time"
                )
            time.sleep(_POLL_SECONDS)

    def live_orchestrators(self) -> set[str]:
        """The ids of the orchestrators whose registry lease is live now."""
        from sandbox_sdk.server.store.registry import OrchestratorRegistry

        registry = OrchestratorRegistry.open(self.database_url)
        try:
            return {row.id for row in registry.list_live()}
        finally:
            registry.close()

    # -- faults -----------------------------------------------------------------------------

    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        """Sends ``signum`` (SIGKILL by default: a crash) to server ``name`` and waits for it."""
        server = self.servers[name]
        if signum == signal.SIGKILL:
            self._killed.add(name)
        server.send_signal(signum)
        server.wait()

    def restart(self, name: str) -> None:
        """Starts server ``name`` again on its port and config; waits until it serves."""
        server = self.servers[name]
        if server.running:
            raise ClusterError(f"{name} is running; kill it first")
        server.start()
        self._wait_serving(server)
        self._killed.discard(name)

    # -- stop -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stops every server, Redis and PostgreSQL, and removes the cluster's directory.

        Each step runs even when an earlier one failed; the first error is raised at the end.
        """
        errors: list[BaseException] = []
        for step in self._stop_steps():
            try:
                step()
            except BaseException as error:  # the rest must still be stopped
                errors.append(error)
        if errors:
            raise errors[0]

    def _stop_steps(self) -> Iterator[Callable[[], None]]:
        yield lambda: self._terminate(self.gateways)
        yield self._clean_up_after_killed_orchestrators
        yield lambda: self._terminate(self.orchestrators)
        if self.redis is not None:
            yield self.redis.stop
        yield self.postgres.stop
        yield self._remove_directory

    def _terminate(self, servers: list[ServerProcess]) -> None:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            server.wait()

    def _clean_up_after_killed_orchestrators(self) -> None:
        # Started again, an orchestrator ends the environments it left running, removing
        # their processes, cgroups and mounts; stopped cleanly afterwards (next step).
        for name in sorted(self._killed):
            server = self.servers[name]
            if server.kind == "orchestrator" and not server.running:
                server.start()
                self._wait_serving(server)
        self._killed.clear()

    def _remove_directory(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
