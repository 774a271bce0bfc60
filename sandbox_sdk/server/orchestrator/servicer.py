"""The OrchestratorService servicer: environment calls go to the sandbox layer,
experiment calls to the experiment engine, template calls to the template
store, as each RPC's ``owner`` option says.

An RPC that declares no owner fails at import, so a new RPC in the contract
cannot go unserved."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from sandbox_sdk.api.v1 import options_pb2, orchestrator_service_pb2
from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.status import MethodHandler, ServiceError

SERVICE = orchestrator_service_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]


def owner_of(method: MethodDescriptor) -> options_pb2.MethodRules.Owner.ValueType:
    """Which handler object serves an RPC; ValueError when the contract names none."""
    owner = method.GetOptions().Extensions[options_pb2.rules].owner
    if owner == options_pb2.MethodRules.OWNER_UNSPECIFIED:
        raise ValueError(f"OrchestratorService.{method.name} declares no owner in sandbox.v1.rules")
    return owner


def _owned_by(owner: options_pb2.MethodRules.Owner.ValueType) -> frozenset[str]:
    return frozenset(m.name for m in SERVICE.methods if owner_of(m) == owner)


# Which handler object serves each RPC, as the contract's sandbox.v1.rules option declares.
ENVIRONMENT_RPCS = _owned_by(options_pb2.MethodRules.OWNER_ENVIRONMENTS)
EXPERIMENT_RPCS = _owned_by(options_pb2.MethodRules.OWNER_EXPERIMENTS)
TEMPLATE_RPCS = _owned_by(options_pb2.MethodRules.OWNER_TEMPLATES)

RpcHandler = Callable[[Any, Any], Any]
"""A bound handler: ``(request, context)`` to a response, or an async generator of them."""


def handler_table(
    environments: object, experiments: object, templates: object | None
) -> dict[str, RpcHandler]:
    """Every OrchestratorService RPC's handler, from the object its ``owner`` names.

    An RPC the contract declares but its owner does not serve yet (or a node
    running without templates) answers UNIMPLEMENTED with the reason, rather
    than failing the whole service.
    """
    owners = {
        options_pb2.MethodRules.OWNER_ENVIRONMENTS: environments,
        options_pb2.MethodRules.OWNER_EXPERIMENTS: experiments,
        options_pb2.MethodRules.OWNER_TEMPLATES: templates,
    }
    table: dict[str, RpcHandler] = {}
    for method in SERVICE.methods:
        handler = getattr(owners[owner_of(method)], method.name, None)
        table[method.name] = handler if callable(handler) else _unimplemented(method)
    return table


def _unimplemented(method: MethodDescriptor) -> RpcHandler:
    error = ServiceError(
        grpc.StatusCode.UNIMPLEMENTED,
        ErrorReason.NOT_IMPLEMENTED,
        f"{method.name} is in the contract but this orchestrator does not serve it yet",
    )
    if method.server_streaming:

        async def refuse_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            raise error
            yield  # an async generator, as streaming handlers are

        return refuse_stream

    async def refuse(request: Any, context: Any) -> Any:
        raise error

    return refuse


def add_orchestrator_service(server: grpc.aio.Server, handlers: dict[str, RpcHandler]) -> None:
    """Serves every OrchestratorService RPC from :func:`handler_table`'s handlers.

    ``server`` must run :class:`~sandbox_sdk.server.status.ErrorInterceptor` (last), as
    the orchestrator's does: besides turning errors into statuses, it sends the
    ``ResponsePage`` StreamExperimentEvents yields message by message."""
    unbound = {m.name for m in SERVICE.methods} - set(handlers)
    if unbound:
        raise RuntimeError(f"OrchestratorService RPCs with no handler: {sorted(unbound)}")
    methods = {m.name: _method_handler(m, handlers[m.name]) for m in SERVICE.methods}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, methods),)
    )


def _method_handler(method: MethodDescriptor, handler: RpcHandler) -> MethodHandler:
    """What the generated ``add_OrchestratorServiceServicer_to_server`` registers for a
    method, but with :func:`_serialized` as the response serializer."""
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[method.client_streaming, method.server_streaming]
    return make(
        handler,
        request_deserializer=GetMessageClass(method.input_type).FromString,
        response_serializer=_serialized,
    )


def _serialized(response: Message | bytes) -> bytes:
    """A response's bytes: a handler may answer with a response it serialized already (an
    experiment's stored events), which goes out unchanged."""
    return response if isinstance(response, bytes) else response.SerializeToString()
