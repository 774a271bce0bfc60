"""Helpers of the chaos suite: the real server, tenants, raw calls, and a bystander.

A *bystander* is another tenant that keeps calling GetEnvironment and the
health check while a test puts a hostile load on the server. Every call has
a deadline far above normal (``BYSTANDER_DEADLINE_SECONDS``): a call that
misses it, or fails, fails the test. That is the availability check; nothing
here asserts on latency.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The servers are the end-to-end tests' (tests/e2e/e2e_support.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

import grpc
from e2e_support import BackgroundLoop, EmbeddedStack, unique_tenant
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandbox_sdk.api.v1 import gateway_service_pb2_grpc, requests_pb2

BYSTANDER_DEADLINE_SECONDS = 5.0
GATEWAY_SERVICE = "sandbox.v1.GatewayService"
ORCHESTRATOR_SERVICE = "sandbox.v1.OrchestratorService"


@dataclass
class Tenant:
    """A tenant with its own key, a channel to the gateway and a stub."""

    name: str
    key: str
    channel: grpc.Channel
    stub: gateway_service_pb2_grpc.GatewayServiceStub

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata that authenticates this tenant."""
        return (("authorization", f"Bearer {self.key}"),)

    def call(self, method: str, request: Any, timeout: float = 30.0) -> Any:
        """A unary GatewayService call as this tenant."""
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=timeout)

    def create_environment(self) -> str:
        """A new RUNNING environment's id (default limits)."""
        request = requests_pb2.CreateEnvironmentRequest()
        return str(self.call("CreateEnvironment", request).environment.id)

    def exec(self, environment_id: str, argv: list[str], timeout_seconds: float = 120) -> str:
        """Runs a command and returns its stdout; fails unless it exits 0."""
        request = requests_pb2.ExecCommandRequest(environment_id=environment_id, argv=argv)
        request.timeout.FromSeconds(int(timeout_seconds))
        stdout: list[bytes] = []
        code = None
        for message in self.stub.ExecCommand(
            request, metadata=self.metadata, timeout=timeout_seconds + 30
        ):
            kind = message.WhichOneof("event")
            if kind == "stdout":
                stdout.append(message.stdout)
            elif kind == "exited":
                code = message.exited.exit_code
        text = b"".join(stdout).decode(errors="replace")
        assert code == 0, f"{argv} exited with {code}: {text[-2000:]}"
        return text

    def close(self) -> None:
        """Closes the channel."""
        self.channel.close()


@dataclass
class ChaosServer:
    """An embedded server on a background loop, with tenants made through its admin key."""

    stack: EmbeddedStack
    loop: BackgroundLoop
    tenants: list[Tenant] = field(default_factory=list)

    @classmethod
    def start(cls, data_dir: Path) -> ChaosServer:
        """Starts the server with its default configuration."""
        loop = BackgroundLoop()
        return cls(EmbeddedStack.start(loop, data_dir), loop)

    @property
    def target(self) -> str:
        """The gateway's address."""
        return self.stack.target

    @property
    def orchestrator_target(self) -> str:
        """The orchestrator's own (loopback) address."""
        return str(self.stack.server.orchestrator.address)

    @property
    def internal_token(self) -> str:
        """The token the orchestrator accepts from its gateway."""
        return str(self.stack.server.orchestrator.config.internal_token)

    def tenant(self, prefix: str) -> Tenant:
        """A fresh tenant with a read/write key."""
        name = unique_tenant(prefix)
        key = self.stack.tenant_key(name)
        channel = grpc.insecure_channel(self.target)
        made = Tenant(name, key, channel, gateway_service_pb2_grpc.GatewayServiceStub(channel))
        self.tenants.append(made)
        return made

    def delete_all_environments(self) -> None:
        """Deletes every environment of every tenant made here."""
        for tenant in self.tenants:
            # Deleting ends an environment, so the first page is always the next one.
            while True:
                listed = tenant.call("ListEnvironments", requests_pb2.ListEnvironmentsRequest())
                for environment in listed.environments:
                    tenant.call(
                        "DeleteEnvironment",
                        requests_pb2.DeleteEnvironmentRequest(environment_id=environment.id),
                    )
                if not listed.next_page_token:
                    break

    def healthy(self) -> bool:
        """Whether the gateway's health check answers SERVING within the deadline."""
        with grpc.insecure_channel(self.target) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=BYSTANDER_DEADLINE_SECONDS
            )
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    def stop(self) -> None:
        """Stops the server and its loop."""
        for tenant in self.tenants:
            tenant.close()
        self.stack.stop()
        self.loop.close()


@dataclass
class BystanderReport:
    """What the bystander saw: completed calls and failures (with their status)."""

    calls: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


@contextmanager
def bystander(
    server: ChaosServer, tenant: Tenant, environment_id: str
) -> Iterator[BystanderReport]:
    """Calls GetEnvironment and the health check in a loop until the block ends.

    Each call has a deadline of BYSTANDER_DEADLINE_SECONDS; any failure is recorded.
    """
    report = BystanderReport()
    stop = threading.Event()
    request = requests_pb2.GetEnvironmentRequest(environment_id=environment_id)
    health = health_pb2_grpc.HealthStub(tenant.channel)

    def calls() -> Iterator[Callable[[], object]]:
        while True:
            yield lambda: tenant.call("GetEnvironment", request, BYSTANDER_DEADLINE_SECONDS)
            yield lambda: health.Check(
                health_pb2.HealthCheckRequest(), timeout=BYSTANDER_DEADLINE_SECONDS
            )

    def run() -> None:
        for call in calls():
            if stop.is_set():
                return
            started = time.monotonic()
            try:
                call()
            except grpc.RpcError as error:
                report.failures.append(f"{error.code().name}: {error.details()}")
            report.latencies.append(time.monotonic() - started)
            report.calls += 1
            time.sleep(0.005)

    thread = threading.Thread(target=run, name="bystander", daemon=True)
    thread.start()
    try:
        yield report
    finally:
        stop.set()
        thread.join(BYSTANDER_DEADLINE_SECONDS * 3)


def processes_with(argument: str) -> list[int]:
    """Pids of live processes with ``argument`` in their command line (to find leaks)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command_line = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if argument.encode() in command_line:
            found.append(int(proc.name))
    return found


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls ``condition`` until it holds; fails with ``what`` after ``timeout`` seconds."""
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(0.05)


@contextmanager
def own_stack(data_dir: Path, config: dict[str, Any]) -> Iterator[EmbeddedStack]:
    """A server of the test's own, with ``config``, for tests that change its limits or
    its disk (the shared ``chaos_server`` must stay as it is for the others)."""
    background = BackgroundLoop()
    started = EmbeddedStack.start(background, data_dir, config)
    try:
        yield started
    finally:
        started.stop()
        background.close()
