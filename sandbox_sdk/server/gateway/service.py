"""GatewayService: authenticate, limit, route and forward every call.

Environment, experiment and model calls are forwarded as raw bytes (no
deserialization on the way in or out); only the resource id is read from the
request, by scanning the serialized message. Orchestrator errors reach the
client unchanged: code, message and the ``grpc-status-details-bin`` trailer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from sandbox_sdk.api.v1 import environment_pb2, requests_pb2
from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server import ids
from sandbox_sdk.server.gateway.admin import Administrator, ApiKeyAdmin, parse_request
from sandbox_sdk.server.gateway.archived_experiments import (
    ArchivedExperiments,
    falls_back,
    not_archived,
)
from sandbox_sdk.server.gateway.authentication import (
    AUTHORIZATION_KEY,
    Authenticator,
    require_scope,
)
from sandbox_sdk.server.gateway.config import RetrySettings
from sandbox_sdk.server.gateway.listing import FanOutLister, is_transport_failure, metadata_pairs
from sandbox_sdk.server.gateway.methods import METHODS, MethodSpec, Quota, Routing
from sandbox_sdk.server.gateway.metrics import GatewayMetrics
from sandbox_sdk.server.gateway.orchestrators import (
    OrchestratorLink,
    OrchestratorPool,
    call_metadata,
    unavailable,
)
from sandbox_sdk.server.gateway.quotas import QuotaEnforcer
from sandbox_sdk.server.gateway.rate_limits import RateLimiter
from sandbox_sdk.server.gateway.wire import (
    MalformedMessageError,
    bool_field,
    message_field,
    string_field,
)
from sandbox_sdk.server.response_page import StreamItem
from sandbox_sdk.server.status import ServiceError, invalid_argument, not_found, served_call
from sandbox_sdk.utils.backoff import backoff_ceiling, ends_in_time, full_jitter

access_log = logging.getLogger("sandbox_sdk.server.gateway.access")
"""One line per call, at DEBUG: off by default, so a call pays one level check for it.
``SANDBOX_SDK_ACCESS_LOG=1`` (see :func:`sandbox_sdk.server.embedded.configure_logging`)
or setting this logger to DEBUG turns it on."""

Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:
    _GenericRpcHandler = grpc.GenericRpcHandler[Any, Any]
else:  # grpc's runtime classes are not generic; only the stubs are
    _GenericRpcHandler = grpc.GenericRpcHandler
_RESOURCE = {
    Routing.ENVIRONMENT: ("environment_id", ids.ENVIRONMENT, ErrorReason.ENVIRONMENT_NOT_FOUND),
    Routing.EXPERIMENT: ("experiment_id", ids.EXPERIMENT, ErrorReason.EXPERIMENT_NOT_FOUND),
    Routing.TEMPLATE: ("template_id", ids.TEMPLATE, ErrorReason.TEMPLATE_NOT_FOUND),
}
# How long CreateEnvironment remembers where a request_id was placed, so that a
# retried create reaches the orchestrator that deduplicates it.
_PLACEMENT_MEMORY_SECONDS = 600.0
_PLACEMENT_MEMORY_SIZE = 10_000


@dataclass(slots=True)
class Caller:
    """An authenticated call: whose it is and its request id."""

    tenant: str
    key_id: str
    request_id: str
    operator: bool = False


class GatewayService(_GenericRpcHandler):
    """The generic handler serving every GatewayService method."""

    def __init__(
        self,
        *,
        pool: OrchestratorPool,
        authenticator: Authenticator,
        rate_limiter: RateLimiter,
        quotas: QuotaEnforcer,
        admin: ApiKeyAdmin,
        metrics: GatewayMetrics,
        retry: RetrySettings,
        archived: ArchivedExperiments | None = None,
    ) -> None:
        self._pool = pool
        # Finished experiments whose orchestrator is gone are read from the archive.
        self._archived = archived
        self._authenticator = authenticator
        self._rate_limiter = rate_limiter
        self._quotas = quotas
        self._admin = admin
        self._metrics = metrics
        self._retry = retry
        self._lister = FanOutLister(pool)
        self._placements: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._handlers = {spec.path: self._method_handler(spec) for spec in METHODS.values()}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """The handler for a method path, or ``None`` for paths of other services."""
        return self._handlers.get(handler_call_details.method)

    # -- building handlers -------------------------------------------------------------

    def _method_handler(self, spec: MethodSpec) -> grpc.RpcMethodHandler[Any, Any]:
        if spec.routing is Routing.LOCAL:
            # No request_deserializer: the request is decoded only after the caller
            # is authenticated, and bytes that are not the message are INVALID_ARGUMENT.
            return grpc.unary_unary_rpc_method_handler(
                self._unary(spec, self._admin_call(spec)),
                response_serializer=spec.response_type.SerializeToString,
            )
        if spec.client_streaming and spec.server_streaming:
            return grpc.stream_stream_rpc_method_handler(self._bidirectional(spec))
        if spec.client_streaming:
            return grpc.stream_unary_rpc_method_handler(self._client_streaming(spec))
        if spec.server_streaming:
            return grpc.unary_stream_rpc_method_handler(self._streaming(spec))
        return grpc.unary_unary_rpc_method_handler(self._unary(spec, self._route_unary(spec)))

    def _client_streaming(
        self, spec: MethodSpec
    ) -> Callable[[AsyncIterator[bytes], Context], Awaitable[bytes]]:
        """A client stream (UploadDirectory): admitted like every call, routed by the
        resource id in its first message, the rest forwarded as bytes. Never retried:
        the stream cannot be replayed."""

        async def route(stream: AsyncIterator[bytes], context: Context, caller: Caller) -> bytes:
            link, forwarded = await self._routed_by_first_message(spec, stream)
            upstream = link.client_stream(spec.upstream_path)
            metadata = call_metadata(link, caller.tenant, caller.request_id)
            try:
                return await upstream(
                    forwarded, timeout=context.time_remaining(), metadata=metadata
                )
            except grpc.aio.AioRpcError as error:
                self._raise_if_transport_failed(link, error)
                raise

        return self._unary(spec, route)

    def _bidirectional(
        self, spec: MethodSpec
    ) -> Callable[[AsyncIterator[bytes], Context], AsyncIterator[StreamItem]]:
        """A bidirectional stream (ForwardPort): admitted like every call, routed by the
        resource id in its first message (the header), then bytes both ways as they come.
        Never retried: the stream cannot be replayed."""

        def route(
            requests: AsyncIterator[bytes], context: Context, caller: Caller
        ) -> AsyncIterator[StreamItem]:
            return self._forward_bidirectional(spec, requests, context, caller)

        return self._server_streaming(spec, route)

    async def _forward_bidirectional(
        self, spec: MethodSpec, stream: AsyncIterator[bytes], context: Context, caller: Caller
    ) -> AsyncIterator[StreamItem]:
        link, forwarded = await self._routed_by_first_message(spec, stream)
        upstream = link.bidi_stream(spec.upstream_path)
        metadata = call_metadata(link, caller.tenant, caller.request_id)
        call = upstream(forwarded, timeout=context.time_remaining(), metadata=metadata)
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as error:
            self._raise_if_transport_failed(link, error)
            raise
        finally:
            call.cancel()

    async def _routed_by_first_message(
        self, spec: MethodSpec, stream: AsyncIterator[bytes]
    ) -> tuple[OrchestratorLink, AsyncIterator[bytes]]:
        """The owner named by the stream's first message (read ahead to route the call),
        and the whole stream to forward to it, that first message included."""
        requests = aiter(stream)
        first = await anext(requests, None)
        link = self._owner(spec, first or b"")

        async def forwarded() -> AsyncIterator[bytes]:
            if first is not None:
                yield first
            async for request in requests:
                yield request

        return link, forwarded()

    def _admin_call(self, spec: MethodSpec) -> Callable[[bytes, Context, Caller], Awaitable[Any]]:
        operations: dict[str, Callable[[Any, Administrator], Message]] = {
            "CreateApiKey": self._admin.create,
            "ListApiKeys": self._admin.list,
            "RevokeApiKey": self._admin.revoke,
        }
        operation = operations[spec.name]

        async def call(request: bytes, context: Context, caller: Caller) -> Any:
            admin = Administrator(caller.tenant, caller.key_id, caller.operator)
            parsed = parse_request(request, spec.request_type)
            # Key writes and listings are database calls (PostgreSQL: over the network).
            return await asyncio.to_thread(operation, parsed, admin)

        return call

    def _unary(
        self, spec: MethodSpec, route: Callable[[Any, Context, Caller], Awaitable[Any]]
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        async def handle(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            caller: Caller | None = None
            try:
                caller = await self._admit(spec, context)
                return await route(request, context, caller)
            except ServiceError as error:
                code = error.code
                raise
            except grpc.aio.AioRpcError as error:
                code = error.code()
                await _forward_error(context, error)
                raise  # unreachable: abort raises
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                raise
            finally:
                self._finish(spec, caller, code, started)

        return handle

    def _streaming(self, spec: MethodSpec) -> Callable[[bytes, Context], AsyncIterator[StreamItem]]:
        # The owner's stream itself, not re-yielded by a generator of its own: every
        # message of a stream passes through each layer here.
        def route(request: bytes, context: Context, caller: Caller) -> AsyncIterator[StreamItem]:
            try:
                link = self._owner(spec, request)
            except ServiceError as error:
                return self._archived_or_raise(spec, request, caller, error)
            return self._forward_stream(spec, link, request, context, caller)

        return self._server_streaming(spec, route)

    async def _archived_or_raise(
        self, spec: MethodSpec, request: bytes, caller: Caller, error: ServiceError
    ) -> AsyncIterator[bytes]:
        """The archive's event stream in place of an owner that is gone or down, or the
        error for an experiment the archive could not answer either."""
        archived = await self._archived_stream(spec, request, caller, error)
        if archived is None:
            raise self._not_archived(spec, error) from None
        async for message in archived:
            yield message

    def _server_streaming(
        self, spec: MethodSpec, route: Callable[[Any, Context, Caller], AsyncIterator[StreamItem]]
    ) -> Callable[[Any, Context], AsyncIterator[StreamItem]]:
        """A handler answering with a stream: admitted, counted among the active streams
        while open, measured and logged with its final code, like :meth:`_unary`."""
        active = self._metrics.active_streams.labels(spec.name)

        async def handle(request: Any, context: Context) -> AsyncIterator[StreamItem]:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            caller: Caller | None = None
            active.inc()
            try:
                caller = await self._admit(spec, context)
                async for message in route(request, context, caller):
                    yield message
            except ServiceError as error:
                code = error.code
                raise
            except grpc.aio.AioRpcError as error:
                code = error.code()
                await _forward_error(context, error)
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                raise
            finally:
                active.dec()
                self._finish(spec, caller, code, started)

        return handle

    # -- every call ----------------------------------------------------------------------

    async def _admit(self, spec: MethodSpec, context: Context) -> Caller:
        call = served_call(context)
        authorization = ""
        for key, value in call.metadata:
            if key == AUTHORIZATION_KEY:
                authorization = str(value)
                break
        record = await self._authenticator.authenticate_async(authorization)
        require_scope(record, spec.scope, spec.name)
        try:
            await self._rate_limiter.admit(record.tenant)
        except ServiceError as error:
            self._metrics.refused(record.tenant, error.reason)
            raise
        return Caller(record.tenant, record.id, call.request_id, record.is_operator)

    def _finish(
        self, spec: MethodSpec, caller: Caller | None, code: grpc.StatusCode, started: float
    ) -> None:
        elapsed = time.perf_counter() - started
        self._metrics.observe(spec.name, code, elapsed)
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug(
                "method=%s code=%s tenant=%s key_id=%s request_id=%s duration_ms=%.2f",
                spec.name,
                code.name,
                caller.tenant if caller else "-",
                caller.key_id if caller else "-",
                caller.request_id if caller else "-",
                elapsed * 1000,
            )

    # -- routing -------------------------------------------------------------------------

    def _route_unary(self, spec: MethodSpec) -> Callable[[bytes, Context, Caller], Awaitable[Any]]:
        if spec.routing is Routing.PLACE and spec.name == "CreateTemplate":
            return self._create_template
        if spec.routing is Routing.PLACE:
            return self._create_environment
        if spec.routing is Routing.FAN_OUT:
            return self._fan_out(spec)
        if spec.routing is Routing.ANY:
            return self._any(spec)

        carries_request_id = spec.request_id_field is not None

        async def owned(request: bytes, context: Context, caller: Caller) -> bytes:
            request_id = _request_id_field(spec, request) if carries_request_id else ""
            if spec.quota is None:
                try:
                    link = self._owner(spec, request)
                    return await self._forward_unary(
                        spec, link, request, context, caller, request_id=request_id
                    )
                except ServiceError as error:
                    archived = await self._archived_unary(spec, request, caller, error)
                    if archived is None:
                        raise self._not_archived(spec, error) from None
                    return archived
            link = self._owner(spec, request)
            async with self._quotas.reserve(
                spec.quota, caller.tenant, caller.request_id, context.time_remaining()
            ):
                return await self._forward_unary(
                    spec, link, request, context, caller, request_id=request_id
                )

        return owned

    async def _archived_unary(
        self, spec: MethodSpec, request: bytes, caller: Caller, error: ServiceError
    ) -> bytes | None:
        """The archive's answer for an experiment whose owner is gone or down, or ``None``."""
        if self._archived is None or not falls_back(spec.name, error):
            return None
        return await self._archived.unary(spec.name, request, caller.tenant)

    async def _archived_stream(
        self, spec: MethodSpec, request: bytes, caller: Caller, error: ServiceError
    ) -> AsyncIterator[bytes] | None:
        """The archive's event stream for an experiment whose owner is gone or down, or ``None``."""
        if self._archived is None or not falls_back(spec.name, error):
            return None
        return await self._archived.stream(request, caller.tenant)

    def _not_archived(self, spec: MethodSpec, error: ServiceError) -> ServiceError:
        """The error for an experiment read the archive could not answer either."""
        if self._archived is None or not falls_back(spec.name, error):
            return error
        return not_archived(error)

    def _owner(self, spec: MethodSpec, request: bytes) -> OrchestratorLink:
        field, kind, reason = _RESOURCE[spec.routing]
        try:
            resource_id = _routed_id(request, spec.id_path)
        except MalformedMessageError:
            raise invalid_argument(
                [("request", f"not a serialized {spec.request_type.DESCRIPTOR.name}")]
            ) from None
        if not resource_id:
            raise invalid_argument([(field, "required: the id the create call returned")])
        if spec.routing is Routing.TEMPLATE and not resource_id.startswith(f"{kind}-"):
            # A public template's name: every orchestrator builds the public set.
            return self._any_available()
        orchestrator_id = ids.owner_of(resource_id, kind)
        if orchestrator_id is None:
            raise invalid_argument(
                [
                    (
                        field,
                        f"{resource_id!r} is not an id this service issued; use the id the"
                        f" create call returned, shaped {kind}-<orchestrator>-<16 hex digits>",
                    )
                ]
            )
        link = self._pool.owner(orchestrator_id)
        if link is None:
            self._pool.require_not_lost(orchestrator_id)
            raise not_found(reason, f"{resource_id} does not exist")
        link.require_available()
        return link

    def _any_available(self) -> OrchestratorLink:
        available = self._pool.available()
        if not available:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                ErrorReason.NO_HEALTHY_ORCHESTRATOR,
                "no orchestrator is reachable now; retry later",
                retry_after=2.0,
            )
        return random.choice(available)  # noqa: S311  (spreading load, not a secret)

    async def _create_template(self, request: bytes, context: Context, caller: Caller) -> bytes:
        """A new template goes where there is the most free capacity; a retried create
        (same request_id) goes where the first one went, which deduplicates it."""
        spec = METHODS["CreateTemplate"]
        request_id = _request_id_field(spec, request)
        link = self._remembered_placement(caller.tenant, request_id)
        if link is None:
            remaining = context.time_remaining()
            link = await self._pool.place_environment(
                min(2.0, remaining) if remaining is not None else 2.0, queue_when_full=True
            )
            self._remember_placement(caller.tenant, request_id, link)
        return await self._forward_unary(
            spec, link, request, context, caller, request_id=request_id
        )

    async def _create_environment(self, request: bytes, context: Context, caller: Caller) -> bytes:
        spec = METHODS["CreateEnvironment"]
        request_id = _request_id_field(spec, request)
        async with self._quotas.reserve(
            Quota.ENVIRONMENTS, caller.tenant, caller.request_id, context.time_remaining()
        ):
            link = self._remembered_placement(caller.tenant, request_id)
            template = _template_of(request)
            if link is None and template.startswith(f"{ids.TEMPLATE}-"):
                # A tenant's template lives on the orchestrator that built it.
                link = self._owner(METHODS["GetTemplate"], _template_request(template))
            if link is None:
                remaining = context.time_remaining()
                link = await self._pool.place_environment(
                    min(2.0, remaining) if remaining is not None else 2.0,
                    queue_when_full=_queue_when_full(request),
                )
            self._remember_placement(caller.tenant, request_id, link)
            return await self._forward_unary(
                spec, link, request, context, caller, request_id=request_id
            )

    def _remembered_placement(self, tenant: str, request_id: str) -> OrchestratorLink | None:
        if not request_id:
            return None
        placed = self._placements.get(f"{tenant}/{request_id}")
        if placed is None or time.monotonic() - placed[1] > _PLACEMENT_MEMORY_SECONDS:
            return None
        return self._pool.owner(placed[0])

    def _remember_placement(self, tenant: str, request_id: str, link: OrchestratorLink) -> None:
        if not request_id:
            return
        self._placements[f"{tenant}/{request_id}"] = (link.id, time.monotonic())
        while len(self._placements) > _PLACEMENT_MEMORY_SIZE:
            self._placements.popitem(last=False)

    def _fan_out(self, spec: MethodSpec) -> Callable[[bytes, Context, Caller], Awaitable[bytes]]:
        async def fan_out(request: bytes, context: Context, caller: Caller) -> bytes:
            if len(self._pool.links) == 1:
                link = self._pool.links[0]
                link.require_available()
                return await self._forward_unary(spec, link, request, context, caller)
            try:
                parsed = spec.request_type.FromString(request)
            except Exception:  # protobuf raises DecodeError, not always a subclass we can name
                raise invalid_argument(
                    [("request", f"not a serialized {spec.request_type.DESCRIPTOR.name}")]
                ) from None
            response = await self._lister.page(
                spec, parsed, caller.tenant, caller.request_id, context.time_remaining()
            )
            return response.SerializeToString()

        return fan_out

    def _any(self, spec: MethodSpec) -> Callable[[bytes, Context, Caller], Awaitable[bytes]]:
        async def any_orchestrator(request: bytes, context: Context, caller: Caller) -> bytes:
            for link in self._pool.available():
                try:
                    return await self._forward_unary(spec, link, request, context, caller)
                except ServiceError as error:
                    if error.reason != ErrorReason.ORCHESTRATOR_UNAVAILABLE:
                        raise
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                ErrorReason.NO_HEALTHY_ORCHESTRATOR,
                "no orchestrator is reachable now; retry later",
                retry_after=2.0,
            )

        return any_orchestrator

    # -- forwarding ----------------------------------------------------------------------

    def _retry_delay(
        self, error: grpc.aio.AioRpcError, attempt: int, context: Context
    ) -> float | None:
        """The wait before retrying a forwarded call, or ``None`` to give up.

        Only UNAVAILABLE is retried, within the caller's deadline; the wait is
        fully jittered so that the calls an orchestrator dropped together (it
        restarted, say) do not all come back to it at once.
        """
        if error.code() != grpc.StatusCode.UNAVAILABLE or attempt >= self._retry.max_attempts:
            return None
        ceiling = backoff_ceiling(
            attempt,
            initial=self._retry.initial_backoff_seconds,
            multiplier=self._retry.multiplier,
            maximum=self._retry.max_backoff_seconds,
        )
        wait = full_jitter(ceiling, random.random)
        return wait if ends_in_time(wait, context.time_remaining()) else None

    def _raise_if_transport_failed(
        self, link: OrchestratorLink, error: grpc.aio.AioRpcError
    ) -> None:
        """UNAVAILABLE naming the orchestrator, marked failed, when the call never reached
        it or the connection broke; an error the orchestrator answered is left to raise."""
        if is_transport_failure(error):
            self._pool.call_failed(link)
            raise unavailable(link.id) from None

    async def _forward_unary(
        self,
        spec: MethodSpec,
        link: OrchestratorLink,
        request: bytes,
        context: Context,
        caller: Caller,
        *,
        request_id: str = "",
    ) -> bytes:
        upstream = link.unary(spec.upstream_path)
        metadata = call_metadata(link, caller.tenant, caller.request_id)
        attempt = 1
        while True:
            try:
                response: bytes = await upstream(
                    request, timeout=context.time_remaining(), metadata=metadata
                )
                return response
            except grpc.aio.AioRpcError as error:
                delay = self._retry_delay(error, attempt, context)
                if spec.retryable(request_id) and delay is not None:
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                self._raise_if_transport_failed(link, error)
                raise

    async def _forward_stream(
        self,
        spec: MethodSpec,
        link: OrchestratorLink,
        request: bytes,
        context: Context,
        caller: Caller,
    ) -> AsyncIterator[StreamItem]:
        upstream = link.stream(spec.upstream_path)
        metadata = call_metadata(link, caller.tenant, caller.request_id)
        attempt = 1
        while True:
            call = upstream(request, timeout=context.time_remaining(), metadata=metadata)
            received = False
            try:
                async for message in call:
                    received = True
                    yield message
                return
            except grpc.aio.AioRpcError as error:
                # A stream is retried only before its first message: after that the
                # client has seen output and resumes on its own terms.
                delay = self._retry_delay(error, attempt, context)
                if not received and spec.idempotent and delay is not None:
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                self._raise_if_transport_failed(link, error)
                raise
            finally:
                call.cancel()


def _queue_when_full(request: bytes) -> bool:
    field = requests_pb2.CreateEnvironmentRequest.DESCRIPTOR.fields_by_name["queue_when_full"]
    try:
        return bool_field(request, field.number)
    except MalformedMessageError:
        return False  # the orchestrator answers INVALID_ARGUMENT for the request


def _template_of(request: bytes) -> str:
    """CreateEnvironmentRequest.spec.template, or "" (also for a malformed request, which
    the orchestrator refuses)."""
    spec = requests_pb2.CreateEnvironmentRequest.DESCRIPTOR.fields_by_name["spec"]
    template = environment_pb2.EnvironmentSpec.DESCRIPTOR.fields_by_name["template"]
    try:
        return string_field(message_field(request, spec.number), template.number)
    except MalformedMessageError:
        return ""


def _template_request(template_id: str) -> bytes:
    return requests_pb2.GetTemplateRequest(template_id=template_id).SerializeToString()


def _routed_id(request: bytes, id_path: tuple[int, ...]) -> str:
    """The string at ``id_path`` in ``request``: field 1, or field 1 of the header message
    in field 1 (ForwardPort's first message)."""
    *outer, last = id_path
    for number in outer:
        request = message_field(request, number)
    return string_field(request, last)


def _request_id_field(spec: MethodSpec, request: bytes) -> str:
    if spec.request_id_field is None:
        return ""
    try:
        return string_field(request, spec.request_id_field)
    except MalformedMessageError:
        raise invalid_argument(
            [("request", f"not a serialized {spec.request_type.DESCRIPTOR.name}")]
        ) from None


async def _forward_error(context: Context, error: grpc.aio.AioRpcError) -> None:
    """Ends the call with the orchestrator's status, details trailer included."""
    await context.abort(
        error.code(), error.details() or "", metadata_pairs(error.trailing_metadata())
    )
