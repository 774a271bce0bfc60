"""The real stack for the end-to-end tests: in-process, or as a `sandbox-sdk serve` process.

In-process servers run on one asyncio loop in a background thread, so the
synchronous SDK can call them from the test thread. Server processes are the
installed `sandbox-sdk` command, started on a chosen port and data directory so
they can be stopped (SIGTERM) or killed (SIGKILL) and started again in place.
"""

from __future__ import annotations

import abc
import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import sandbox_runtimes
import worker_places
import yaml

from sandbox_sdk import AsyncSandboxClient, RetryPolicy, SandboxClient
from sandbox_sdk.api.v1 import gateway_service_pb2_grpc
from sandbox_sdk.server.embedded import EmbeddedServer, run_embedded

READY_LINE = "sandbox-sdk serving on"
BIN_DIR = Path(sys.executable).parent
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 60.0
# Quick reconnects while a restarted server comes back, bounded by the deadline.
RECONNECTING = RetryPolicy(max_attempts=50, initial_backoff=0.05, max_backoff=0.5, deadline=60.0)

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def unique_tenant(prefix: str) -> str:
    """A tenant name no other test uses (lower case letters, digits and dashes)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def bearer(secret: str) -> Metadata:
    """The call metadata that authenticates with the API key ``secret``."""
    return (("authorization", f"Bearer {secret}"),)


@dataclass
class Gateway:
    """A gateway's raw gRPC stub and the admin key to call it with."""

    stub: gateway_service_pb2_grpc.GatewayServiceStub
    key: Metadata


def under_test_runtime(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``config`` whose orchestrator isolates environments under the running test's runtime
    (tests/sandbox_runtimes.py) by default, unless ``config`` names a default itself."""
    merged = dict(config or {})
    orchestrator = dict(merged.get("orchestrator") or {})
    sandbox = dict(orchestrator.get("sandbox") or {})
    sandbox.setdefault("default_runtime", sandbox_runtimes.current().value)
    orchestrator["sandbox"] = sandbox
    merged["orchestrator"] = orchestrator
    return merged


def write_server_config(path: Path, config: Mapping[str, Any] | None) -> Path:
    """Writes a `--config` YAML file (``gateway:`` and ``orchestrator:`` sections), its
    orchestrator's default runtime the running test's unless ``config`` names one."""
    path.write_text(yaml.safe_dump(under_test_runtime(config), sort_keys=False))
    return path


class BackgroundLoop:
    """An asyncio loop running in a daemon thread, for in-process servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="e2e-server-loop", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Runs ``coroutine`` on the loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        """Stops the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(STOP_TIMEOUT_SECONDS)
        self.loop.close()


class _Endpoint(abc.ABC):
    """What a client needs to reach a server: its address and its admin key."""

    data_dir: Path

    @property
    @abc.abstractmethod
    def target(self) -> str:
        """The gateway's ``host:port``."""

    @property
    def admin_key(self) -> str:
        """The bootstrap admin key of the ``default`` tenant."""
        return (self.data_dir / "admin.key").read_text().strip()

    def client(self, *, api_key: str | None = None, **options: Any) -> SandboxClient:
        """A synchronous client; the admin key unless ``api_key`` is given."""
        return SandboxClient(self.target, api_key=api_key or self.admin_key, **options)

    def async_client(self, *, api_key: str | None = None, **options: Any) -> AsyncSandboxClient:
        """An asyncio client; the admin key unless ``api_key`` is given."""
        return AsyncSandboxClient(self.target, api_key=api_key or self.admin_key, **options)

    def tenant_key(self, tenant: str, scopes: tuple[str, ...] = ("read", "write")) -> str:
        """A new API key of ``tenant``, made with the admin key through the SDK."""
        with self.client() as admin:
            return admin.create_api_key(tenant=tenant, scopes=scopes).secret


@dataclass
class EmbeddedStack(_Endpoint):
    """A gateway and orchestrator started in this process by ``run_embedded``."""

    server: EmbeddedServer
    background: BackgroundLoop
    data_dir: Path

    @classmethod
    def start(
        cls,
        background: BackgroundLoop,
        data_dir: Path,
        config: Mapping[str, Any] | None = None,
    ) -> EmbeddedStack:
        """Starts a stack on a free port, with ``config`` as its ``--config`` file if given,
        under the running test's runtime (see :func:`under_test_runtime`)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        config_path = write_server_config(data_dir.parent / f"{data_dir.name}.yaml", config)
        server = background.run(
            run_embedded("127.0.0.1", 0, data_dir, config_path), START_TIMEOUT_SECONDS
        )
        return cls(server, background, data_dir)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        """Drains for a second, then stops the gateway and orchestrator."""
        self.background.run(self.server.stop(1.0), STOP_TIMEOUT_SECONDS)


class ServerProcess(_Endpoint):
    """`sandbox-sdk serve` as a child process, restartable on the same port and data dir.

    A thread drains the process output (so the pipe never fills up) into ``output``.
    """

    def __init__(self, data_dir: Path, config: Mapping[str, Any] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.config_path = write_server_config(data_dir.parent / f"{data_dir.name}.yaml", config)
        self.output: list[str] = []
        self._process: subprocess.Popen[str] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the current process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Starts the server and waits for its ready line (or fails with its output)."""
        command = [
            str(BIN_DIR / "sandbox-sdk"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        command += ["--config", str(self.config_path)]
        environment = worker_places.without_client_settings(os.environ)
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
        )
        self._process = process
        ready = threading.Event()
        assert process.stdout is not None
        threading.Thread(
            target=self._drain, args=(process.stdout, ready), name="e2e-server-output", daemon=True
        ).start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not ready.wait(0.05):
            if process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"`sandbox-sdk serve` did not start on port {self.port}; its output:\n"
                    + self.output_tail()
                )

    def _drain(self, stream: IO[str], ready: threading.Event) -> None:
        for line in stream:
            self.output.append(line)
            if READY_LINE in line:
                ready.set()

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Sends ``signum`` and waits for the process to end; returns its exit status."""
        process = self._process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signum)
        try:
            return process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_SECONDS)
            raise

    def kill(self) -> int:
        """SIGKILL: the server gets no chance to clean up."""
        return self.stop(signal.SIGKILL)

    def output_tail(self, lines: int = 60) -> str:
        """The last lines the server printed, for failure messages."""
        return "".join(self.output[-lines:])
