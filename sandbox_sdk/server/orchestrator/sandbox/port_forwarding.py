"""Port forwarding: one TCP connection to a server inside a running environment.

The orchestrator never connects into an environment itself: it sits in the
host's network namespace, where ``127.0.0.1`` is the host's own loopback. The
environment's agent, already inside the environment's namespaces, connects to
``127.0.0.1:<port>`` there and hands the connected socket back, or (a one-way
agent, as under gVisor) relays it through a socket pair whose other end the
orchestrator uses in its place (see :meth:`.AgentClient.connect`); a server's
reset then arrives as an end of file. The only thing taken from the request is
the port, checked to be 1 to 65535. No network is opened for it: the
environment's policy (none, egress) stays as it is.

The bytes are relayed on the event loop (:mod:`.byte_relay`), counted in the
``sandbox_forwarded_bytes`` metric, and count as activity (each chunk
postpones idle expiry). An environment carries at most
``max_port_forwards_per_environment`` connections at once; when it ends, its
connections end with it (FAILED_PRECONDITION saying why).
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import AsyncGenerator, AsyncIterator

import grpc

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.orchestrator.sandbox import byte_relay
from sandbox_sdk.server.orchestrator.sandbox.activity import Activity
from sandbox_sdk.server.orchestrator.sandbox.agent_client import AgentError, ConnectFailed
from sandbox_sdk.server.orchestrator.sandbox.environments import LiveEnvironments
from sandbox_sdk.server.orchestrator.sandbox.runtime import Runtime
from sandbox_sdk.server.orchestrator.sandbox.statuses import environment_not_found, not_running
from sandbox_sdk.server.status import ServiceError


class _Forward:
    """One open forward: its connection once made, and whether its environment ended."""

    __slots__ = ("connection", "environment_ended")

    def __init__(self) -> None:
        self.connection: socket.socket | None = None
        self.environment_ended = False

    def end(self) -> None:
        """Ends the connection both ways, so the relay reads end of file and stops."""
        self.environment_ended = True
        if self.connection is not None:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


class PortForwarding:
    """Opens, relays, limits and counts the ForwardPort connections of every environment."""

    def __init__(self, environments: LiveEnvironments, activity: Activity) -> None:
        self._environments = environments
        self._activity = activity
        self._metrics = environments.metrics
        self._open: dict[str, set[_Forward]] = {}
        environments.on_terminated(self._environment_ended)

    async def forward(
        self, tenant: str, environment_id: str, port: int, incoming: AsyncIterator[bytes]
    ) -> AsyncGenerator[bytes, None]:
        """Connects to ``port`` in the tenant's running environment; yields what the server
        sends while ``incoming`` goes to it, until the server closes the connection.

        NOT_FOUND for another tenant's environment; FAILED_PRECONDITION when it is
        not running, ends meanwhile, or nothing listens on the port;
        RESOURCE_EXHAUSTED past the environment's number of forwards.
        """
        runtime = (
            self._environments.live(environment_id, tenant)
            or self._environments.running(tenant, environment_id)[1]
        )
        forward = self._reserve(environment_id)
        self._metrics.port_forwards.inc()
        try:
            forward.connection = await self._connect(environment_id, runtime, port)
            self._activity.touch(environment_id)
            chunks = byte_relay.relay(
                forward.connection,
                incoming,
                on_sent=lambda count: self._count(environment_id, "in", count),
                on_received=lambda count: self._count(environment_id, "out", count),
            )
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    yield chunk
        except ConnectionError as error:
            if not (forward.environment_ended or runtime.releasing):
                raise _reset(environment_id, port) from error
        finally:
            self._release(environment_id, forward)
            self._metrics.port_forwards.dec()
        # Killing an environment's processes closes their connections before it is over.
        if forward.environment_ended or runtime.releasing:
            raise self._ended(environment_id)

    def open_forwards(self, environment_id: str) -> int:
        """How many connections the environment carries now."""
        return len(self._open.get(environment_id, ()))

    # --- admission and endings --------------------------------------------------------

    def _reserve(self, environment_id: str) -> _Forward:
        limit = self._environments.settings.max_port_forwards_per_environment
        forwards = self._open.setdefault(environment_id, set())
        if len(forwards) >= limit:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                ErrorReason.QUOTA_EXCEEDED,
                f"environment {environment_id} already carries {limit} forwarded connections,"
                " the most it may at once; close one and retry",
                quota_violations=[
                    ("port_forwards", f"an environment carries at most {limit} at once")
                ],
            )
        forward = _Forward()
        forwards.add(forward)
        return forward

    def _release(self, environment_id: str, forward: _Forward) -> None:
        forwards = self._open.get(environment_id)
        if forwards is not None:
            forwards.discard(forward)
            if not forwards:
                del self._open[environment_id]
        if forward.connection is not None:
            forward.connection.close()

    def _environment_ended(self, environment_id: str) -> None:
        for forward in self._open.get(environment_id, ()):
            forward.end()

    def _ended(self, environment_id: str) -> ServiceError:
        environment = self._environments.record(environment_id)
        if environment is None:
            return environment_not_found(environment_id)
        if environment.running:
            return ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                ErrorReason.ENVIRONMENT_NOT_RUNNING,
                f"environment {environment_id} is ending, and its connections with it;"
                " create a new environment",
            )
        return not_running(environment)

    def _count(self, environment_id: str, direction: str, count: int) -> None:
        self._metrics.forwarded_bytes.labels(direction).inc(count)
        self._activity.touch(environment_id)

    # --- the connection ---------------------------------------------------------------

    async def _connect(self, environment_id: str, runtime: Runtime, port: int) -> socket.socket:
        """The agent's connection to the port, inside the environment."""
        agent = runtime.agent
        if agent is None or agent.closed:
            # Its processes went with its agent: nothing can be listening.
            raise _nothing_listens(environment_id, port)
        try:
            return await agent.connect(port)
        except ConnectFailed as error:
            if error.errno == errno.ECONNREFUSED:
                raise _nothing_listens(environment_id, port) from None
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                ErrorReason.PORT_NOT_LISTENING,
                f"could not connect to port {port} in environment {environment_id}"
                f" ({error}); check that its server accepts connections on 127.0.0.1",
            ) from None
        except AgentError:
            if runtime.releasing:
                raise self._ended(environment_id) from None
            raise _nothing_listens(environment_id, port) from None


def _nothing_listens(environment_id: str, port: int) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        ErrorReason.PORT_NOT_LISTENING,
        f"nothing listens on port {port} in environment {environment_id}; start the server"
        " first, listening on 127.0.0.1 or 0.0.0.0",
        metadata={"port": str(port)},
    )


def _reset(environment_id: str, port: int) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.ABORTED,
        ErrorReason.CONNECTION_RESET,
        f"the server on port {port} in environment {environment_id} reset the connection;"
        " open a new one",
        metadata={"port": str(port)},
    )
