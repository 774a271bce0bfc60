"""The orchestrators behind the gateway: one link each, health, capacity and placement.

A link is how the gateway reaches one orchestrator. :class:`GrpcOrchestratorLink`
calls it over a gRPC channel; the embedded server's in-process link
(``in_process.py``) calls the handlers of an orchestrator running in the same
process. Both take and return serialized messages and report failures as
``grpc.aio.AioRpcError``, so the gateway treats them alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandbox_sdk.api.v1 import orchestrator_service_pb2
from sandbox_sdk.errors import REQUEST_ID_KEY, ErrorReason
from sandbox_sdk.server.gateway.config import OrchestratorEndpoint
from sandbox_sdk.server.keepalive import CHANNEL_KEEPALIVE_OPTIONS
from sandbox_sdk.server.response_page import StreamItem
from sandbox_sdk.server.retry_delays import capacity_retry_delay
from sandbox_sdk.server.status import ServiceError
from sandbox_sdk.server.store.registry import RegisteredOrchestrator
from sandbox_sdk.server.tenancy import TENANT_KEY
from sandbox_sdk.server.tls import ClientTlsConfig, channel_credentials, channel_options

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Reconnect quickly to an orchestrator that comes back; the default backoff
    # grows to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Notice a dead connection to an orchestrator within seconds, even while a
    # forwarded call waits without a deadline.
    *CHANNEL_KEEPALIVE_OPTIONS,
]
GET_CAPACITY = "/sandbox.v1.OrchestratorService/GetCapacity"
_NO_ORCHESTRATOR_RETRY_SECONDS = 2.0

Capacity = orchestrator_service_pb2.GetCapacityResponse
CallMetadata = Sequence[tuple[str, str | bytes]]


class UnaryCallable(Protocol):
    """A bytes-in, bytes-out unary call to one orchestrator method."""

    def __call__(
        self, request: bytes, timeout: float | None = None, metadata: CallMetadata | None = None
    ) -> Awaitable[bytes]: ...


class StreamCall(Protocol):
    """A server-streaming call in progress: its serialized messages, and a way to stop it.

    An orchestrator in this process may send a page of messages as one item."""

    def __aiter__(self) -> AsyncIterator[StreamItem]: ...

    def cancel(self) -> bool: ...


class StreamCallable(Protocol):
    """A bytes-in, bytes-out server-streaming call to one orchestrator method."""

    def __call__(
        self, request: bytes, timeout: float | None = None, metadata: CallMetadata | None = None
    ) -> StreamCall: ...


class ClientStreamCallable(Protocol):
    """A bytes-in, bytes-out client-streaming call: serialized requests in, one response out."""

    def __call__(
        self,
        request_iterator: AsyncIterator[bytes],
        timeout: float | None = None,
        metadata: CallMetadata | None = None,
    ) -> Awaitable[bytes]: ...


class BidiStreamCallable(Protocol):
    """A bytes-in, bytes-out bidirectional call: serialized requests in as the caller sends
    them, serialized responses out as the orchestrator sends them."""

    def __call__(
        self,
        request_iterator: AsyncIterator[bytes],
        timeout: float | None = None,
        metadata: CallMetadata | None = None,
    ) -> StreamCall: ...


class OrchestratorLink(Protocol):
    """What the gateway needs of one orchestrator, however it reaches it.

    ``healthy``, ``capacity`` and ``capacity_time`` are kept by the pool.
    """

    id: str
    address: str
    internal_metadata: tuple[tuple[str, str], ...]
    healthy: bool | None
    capacity: Capacity | None
    capacity_time: float

    def unary(self, path: str) -> UnaryCallable:
        """The unary callable for a method path."""
        ...

    def stream(self, path: str) -> StreamCallable:
        """The server-streaming callable for a method path."""
        ...

    def client_stream(self, path: str) -> ClientStreamCallable:
        """The client-streaming callable for a method path."""
        ...

    def bidi_stream(self, path: str) -> BidiStreamCallable:
        """The bidirectional-streaming callable for a method path."""
        ...

    def require_available(self) -> None:
        """Raises UNAVAILABLE ORCHESTRATOR_UNAVAILABLE when the orchestrator is known down."""
        ...

    async def check_health(self, timeout: float) -> bool:
        """Whether the orchestrator serves."""
        ...

    def connection_lost(self) -> bool:
        """Whether the way to the orchestrator is broken (not just one call failing)."""
        ...

    async def close(self) -> None:
        """Ends calls in flight and releases the link."""
        ...


class LinkState:
    """Health and capacity as the pool last saw them; the part every link shares."""

    def __init__(self, orchestrator_id: str) -> None:
        self.id = orchestrator_id
        # None until the first health check answers.
        self.healthy: bool | None = None
        self.capacity: Capacity | None = None
        self.capacity_time = 0.0

    def require_available(self) -> None:
        """Raises UNAVAILABLE ORCHESTRATOR_UNAVAILABLE when health checks say it is down."""
        if self.healthy is False:
            raise unavailable(self.id)


async def fetch_capacity(link: OrchestratorLink, timeout: float) -> Capacity:
    """Calls GetCapacity."""
    raw = await link.unary(GET_CAPACITY)(
        orchestrator_service_pb2.GetCapacityRequest().SerializeToString(),
        timeout=timeout,
        metadata=link.internal_metadata,
    )
    return Capacity.FromString(raw)


class GrpcOrchestratorLink(LinkState):
    """An orchestrator reached over gRPC: its channel and multicallables."""

    def __init__(
        self,
        endpoint: OrchestratorEndpoint,
        internal_metadata: tuple[tuple[str, str], ...],
        tls: ClientTlsConfig | None = None,
    ) -> None:
        super().__init__(endpoint.id)
        self.address = endpoint.address
        if tls is None:
            self.channel = grpc.aio.insecure_channel(endpoint.address, options=CHANNEL_OPTIONS)
        else:
            self.channel = grpc.aio.secure_channel(
                endpoint.address,
                channel_credentials(tls, "orchestrator_tls"),
                options=[*CHANNEL_OPTIONS, *channel_options(tls)],
            )
        self.internal_metadata = internal_metadata
        self._unary: dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}
        self._stream: dict[str, grpc.aio.UnaryStreamMultiCallable[bytes, bytes]] = {}
        self._client_stream: dict[str, grpc.aio.StreamUnaryMultiCallable[bytes, bytes]] = {}
        self._bidi_stream: dict[str, grpc.aio.StreamStreamMultiCallable[bytes, bytes]] = {}
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def unary(self, path: str) -> UnaryCallable:
        """A bytes-in, bytes-out unary callable for ``path``, made once."""
        callable_ = self._unary.get(path)
        if callable_ is None:
            callable_ = self._unary[path] = self.channel.unary_unary(path, None, None)
        return callable_

    def stream(self, path: str) -> StreamCallable:
        """A bytes-in, bytes-out server-streaming callable for ``path``, made once."""
        callable_ = self._stream.get(path)
        if callable_ is None:
            callable_ = self._stream[path] = self.channel.unary_stream(path, None, None)
        return callable_

    def client_stream(self, path: str) -> ClientStreamCallable:
        """A bytes-in, bytes-out client-streaming callable for ``path``, made once."""
        callable_ = self._client_stream.get(path)
        if callable_ is None:
            callable_ = self._client_stream[path] = self.channel.stream_unary(path, None, None)
        return callable_

    def bidi_stream(self, path: str) -> BidiStreamCallable:
        """A bytes-in, bytes-out bidirectional callable for ``path``, made once."""
        callable_ = self._bidi_stream.get(path)
        if callable_ is None:
            callable_ = self._bidi_stream[path] = self.channel.stream_stream(path, None, None)
        return callable_

    async def check_health(self, timeout: float) -> bool:
        """Asks grpc.health.v1 whether the orchestrator serves."""
        try:
            response = await self._health.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    def connection_lost(self) -> bool:
        """Whether the channel has lost its connection."""
        state = self.channel.get_state(try_to_connect=False)
        return state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.IDLE)

    async def close(self) -> None:
        """Closes the channel, cancelling calls still in flight."""
        await self.channel.close(None)


def unavailable(orchestrator_id: str) -> ServiceError:
    """The error for calls about resources of an orchestrator that cannot be reached."""
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE,
        ErrorReason.ORCHESTRATOR_UNAVAILABLE,
        f"orchestrator {orchestrator_id}, which owns this resource, cannot be reached now;"
        " retry later",
        retry_after=_NO_ORCHESTRATOR_RETRY_SECONDS,
        metadata={"orchestrator_id": orchestrator_id},
    )


def lost(orchestrator_id: str) -> ServiceError:
    """The error for calls about resources of an orchestrator that left the registry."""
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE,
        ErrorReason.ORCHESTRATOR_LOST,
        f"orchestrator {orchestrator_id}, which owned this resource, is gone (it left the"
        " registry or its lease expired) and its environments with it; create them again",
        metadata={"orchestrator_id": orchestrator_id},
    )


def _free_capacity(capacity: Capacity) -> tuple[float, float, float]:
    slots = capacity.environments_max - capacity.environments_running
    memory = (
        1.0 - capacity.memory_bytes_allocated / capacity.memory_bytes_total
        if capacity.memory_bytes_total > 0
        else 0.0
    )
    cpu = (
        1.0 - capacity.cpu_cores_allocated / capacity.cpu_cores_total
        if capacity.cpu_cores_total > 0
        else 0.0
    )
    return float(slots), memory, cpu


class OrchestratorPool:
    """The configured orchestrators, health-checked in the background."""

    def __init__(
        self,
        endpoints: Sequence[OrchestratorEndpoint],
        *,
        internal_token: str | None,
        tls: ClientTlsConfig | None = None,
        health_interval: float = 1.0,
        capacity_ttl: float = 1.0,
        on_health_change: Callable[[str, bool], None] = lambda orchestrator_id, healthy: None,
        in_process: Sequence[OrchestratorLink] = (),
    ) -> None:
        """``in_process`` links replace the gRPC links of the endpoints with their ids.

        The gRPC links send ``internal_token`` and, with ``tls``, speak TLS (mutual
        TLS when it has a client certificate) to the orchestrators.
        """
        internal_metadata = (
            (("authorization", f"Bearer {internal_token}"),) if internal_token else ()
        )
        local = {link.id: link for link in in_process}
        self.links: list[OrchestratorLink] = [
            local.get(e.id) or GrpcOrchestratorLink(e, internal_metadata, tls) for e in endpoints
        ]
        self.by_id = {link.id: link for link in self.links}
        self._health_interval = health_interval
        self._capacity_ttl = capacity_ttl
        self._on_health_change = on_health_change
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._internal_metadata = internal_metadata
        self._tls = tls
        # From the registry: orchestrators taking no new environments, and those whose
        # lease expired (their resources are gone).
        self._draining: set[str] = set()
        self._lost: set[str] = set()

    async def start(self, first_check_timeout: float = 2.0) -> None:
        """Checks every orchestrator once, then keeps checking in the background."""
        await asyncio.gather(*(self._check(link, first_check_timeout) for link in self.links))
        self._tasks = {link.id: asyncio.create_task(self._watch(link)) for link in self.links}

    async def stop(self) -> None:
        """Stops health checks and closes the channels."""
        await asyncio.gather(*(self._stop_watching(link.id) for link in self.links))
        await asyncio.gather(*(link.close() for link in self.links))

    async def _stop_watching(self, orchestrator_id: str) -> None:
        task = self._tasks.pop(orchestrator_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def follow_registry(
        self,
        rows: Sequence[RegisteredOrchestrator],
        now: float,
        first_check_timeout: float = 2.0,
    ) -> None:
        """Makes the pool the registry's live orchestrators: adds new ones, drops the others.

        Orchestrators whose lease expired, and those dropped for it, are remembered
        as lost, so calls for their resources get ORCHESTRATOR_LOST, not NOT_FOUND.
        """
        wanted = {row.id: row for row in rows if row.is_live(now)}
        for link in list(self.links):
            row = wanted.get(link.id)
            if row is None or row.address != link.address:
                await self._drop(link, lost=row is None)
        for row in wanted.values():
            if row.id not in self.by_id:
                endpoint = OrchestratorEndpoint(id=row.id, address=row.address)
                link = GrpcOrchestratorLink(endpoint, self._internal_metadata, self._tls)
                await self._add(link, first_check_timeout)
        self._lost |= {row.id for row in rows if not row.is_live(now)}
        self._draining = {row.id for row in wanted.values() if row.draining}

    async def _add(self, link: OrchestratorLink, first_check_timeout: float) -> None:
        log.info("orchestrator=%s address=%s joined from the registry", link.id, link.address)
        self._lost.discard(link.id)
        await self._check(link, first_check_timeout)
        self.links.append(link)
        self.by_id[link.id] = link
        self._tasks[link.id] = asyncio.create_task(self._watch(link))

    async def _drop(self, link: OrchestratorLink, *, lost: bool) -> None:
        log.warning("orchestrator=%s address=%s left the registry", link.id, link.address)
        self.links.remove(link)
        del self.by_id[link.id]
        if lost:
            self._lost.add(link.id)
        await self._stop_watching(link.id)
        await link.close()

    def require_not_lost(self, orchestrator_id: str) -> None:
        """Raises UNAVAILABLE ORCHESTRATOR_LOST when the orchestrator left the registry."""
        if orchestrator_id in self._lost:
            raise lost(orchestrator_id)

    async def _watch(self, link: OrchestratorLink) -> None:
        while True:
            await asyncio.sleep(self._health_interval)
            await self._check(link, min(self._health_interval, 2.0))

    async def _check(self, link: OrchestratorLink, timeout: float) -> None:
        healthy = await link.check_health(timeout)
        if healthy != link.healthy:
            log.log(
                logging.INFO if healthy else logging.WARNING,
                "orchestrator=%s address=%s healthy=%s",
                link.id,
                link.address,
                healthy,
            )
            self._on_health_change(link.id, healthy)
        link.healthy = healthy
        if not healthy:
            link.capacity = None

    def call_failed(self, link: OrchestratorLink) -> None:
        """Records a call that could not reach the orchestrator.

        It is taken down at once (without waiting for the next health check)
        only when its link has lost the connection; one failed call on a
        working connection is left to the health checks.
        """
        if not link.connection_lost():
            return
        if link.healthy is not False:
            log.warning("orchestrator=%s address=%s unreachable", link.id, link.address)
            self._on_health_change(link.id, False)
        link.healthy = False
        link.capacity = None

    def owner(self, orchestrator_id: str) -> OrchestratorLink | None:
        """The orchestrator with this id, if the gateway fronts it."""
        return self.by_id.get(orchestrator_id)

    def available(self) -> list[OrchestratorLink]:
        """Orchestrators not known to be down, in configuration order."""
        return [link for link in self.links if link.healthy is not False]

    def placeable(self) -> list[OrchestratorLink]:
        """Available orchestrators that take new environments (not draining)."""
        return [link for link in self.available() if link.id not in self._draining]

    async def place_environment(
        self, timeout: float = 2.0, *, queue_when_full: bool = False
    ) -> OrchestratorLink:
        """The available orchestrator with the most free environment slots, then memory, CPU.

        The chosen orchestrator's cached count is bumped so that creates in
        quick succession spread out before the next GetCapacity. When all are
        full, a create that asked to wait (``queue_when_full``) still goes to
        the least full one, which queues it.
        """
        candidates = self.placeable()
        if not candidates:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                ErrorReason.NO_HEALTHY_ORCHESTRATOR,
                "no orchestrator is reachable now; retry later",
                retry_after=_NO_ORCHESTRATOR_RETRY_SECONDS,
            )
        capacities = await asyncio.gather(*(self._capacity(link, timeout) for link in candidates))
        scored = [
            (_free_capacity(capacity), link)
            for link, capacity in zip(candidates, capacities, strict=True)
            if capacity is not None
        ]
        if not scored:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                ErrorReason.NO_HEALTHY_ORCHESTRATOR,
                "no orchestrator answered GetCapacity; retry later",
                retry_after=_NO_ORCHESTRATOR_RETRY_SECONDS,
            )
        free, best = max(scored, key=lambda item: item[0])
        if free[0] <= 0 and not queue_when_full:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                ErrorReason.CAPACITY_EXHAUSTED,
                "every orchestrator is running as many environments as it admits; delete "
                "environments, retry later, or pass queue_when_full (queue=True in the SDK) "
                "to wait for room",
                retry_after=capacity_retry_delay(),
            )
        if best.capacity is not None:
            best.capacity.environments_running += 1
        return best

    async def _capacity(self, link: OrchestratorLink, timeout: float) -> Capacity | None:
        now = time.monotonic()
        if link.capacity is not None and now - link.capacity_time < self._capacity_ttl:
            return link.capacity
        try:
            capacity = await fetch_capacity(link, timeout)
        except grpc.aio.AioRpcError as error:
            log.warning("orchestrator=%s GetCapacity failed: %s", link.id, error.code().name)
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                self.call_failed(link)
            return None
        link.capacity, link.capacity_time = capacity, now
        return capacity


def call_metadata(
    link: OrchestratorLink, tenant: str, request_id: str
) -> tuple[tuple[str, str], ...]:
    """Metadata of a forwarded call: the tenant the gateway vouches for, request id, token."""
    return ((TENANT_KEY, tenant), (REQUEST_ID_KEY, request_id), *link.internal_metadata)
