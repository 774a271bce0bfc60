"""The wire contract: every request of every RPC survives the wire intact."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from sandbox_sdk.api.v1 import gateway_service_pb2, orchestrator_service_pb2

SERVICES = [
    gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"],
    orchestrator_service_pb2.DESCRIPTOR.services_by_name["OrchestratorService"],
]
METHODS = [(s.name, m) for s in SERVICES for m in s.methods]

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "x-é",
    FieldDescriptor.TYPE_BYTES: b"\x00\xffbytes",
    FieldDescriptor.TYPE_BOOL: True,
    FieldDescriptor.TYPE_DOUBLE: 0.5,
    FieldDescriptor.TYPE_FLOAT: 0.25,
    FieldDescriptor.TYPE_INT32: -7,
    FieldDescriptor.TYPE_INT64: 1 << 40,
    FieldDescriptor.TYPE_UINT32: 7,
    FieldDescriptor.TYPE_UINT64: 1 << 41,
}


def _value(field: FieldDescriptor) -> object:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].number
    return _SCALARS[field.type]


def fill(msg: Message, depth: int = 0) -> Message:
    """Sets every field of ``msg`` (one oneof member each), recursing into messages."""
    seen_oneofs: set[str] = set()
    for field in msg.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.name in seen_oneofs:
            continue
        if oneof is not None:
            seen_oneofs.add(oneof.name)
        _fill_field(msg, field, depth)
    return msg


def _fill_field(msg: Message, field: FieldDescriptor, depth: int) -> None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field, value_field = field.message_type.fields
        target = getattr(msg, field.name)
        key = _value(key_field)
        if value_field.message_type is not None:
            if depth < 3:
                _fill_message(target[key], depth + 1)
        else:
            target[key] = _value(value_field)
        return
    if field.message_type is not None:
        if depth >= 3:
            return
        if field.is_repeated:
            _fill_message(getattr(msg, field.name).add(), depth + 1)
        else:
            _fill_message(getattr(msg, field.name), depth + 1)
        return
    if field.is_repeated:
        getattr(msg, field.name).append(_value(field))
    else:
        setattr(msg, field.name, _value(field))


def _fill_message(msg: Message, depth: int) -> None:
    full_name = msg.DESCRIPTOR.full_name
    if full_name == "google.protobuf.Duration":
        msg.FromSeconds(90)  # type: ignore[attr-defined]
    elif full_name == "google.protobuf.Timestamp":
        msg.FromSeconds(1_700_000_000)  # type: ignore[attr-defined]
    elif full_name == "google.protobuf.FieldMask":
        msg.paths.append("labels")  # type: ignore[attr-defined]
    elif full_name == "google.protobuf.Value":
        msg.string_value = "v"  # type: ignore[attr-defined]
    else:
        fill(msg, depth)
    msg.SetInParent()


def _message_class(desc: descriptor.Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(desc)


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_every_request_and_response_round_trips(
    service: str, method: descriptor.MethodDescriptor
) -> None:
    for desc in (method.input_type, method.output_type):
        original = fill(_message_class(desc)())
        wire = original.SerializeToString()
        assert wire or not desc.fields, f"{desc.full_name} serialised to nothing"
        decoded = _message_class(desc).FromString(wire)
        assert decoded == original
        assert decoded.SerializeToString(deterministic=True) == original.SerializeToString(
            deterministic=True
        )


def test_request_messages_follow_the_rpc_naming_rule() -> None:
    for _service, method in METHODS:
        assert method.input_type.name == f"{method.name}Request"
        assert method.output_type.name == f"{method.name}Response"


def test_create_calls_carry_a_request_id_for_idempotency() -> None:
    for _service, method in METHODS:
        if method.name.startswith("Create"):
            assert "request_id" in method.input_type.fields_by_name, method.full_name


def test_list_calls_paginate() -> None:
    for _service, method in METHODS:
        if method.name.startswith("List"):
            assert {"page_size", "page_token"} <= set(method.input_type.fields_by_name)
            assert "next_page_token" in method.output_type.fields_by_name


def test_the_orchestrator_mirrors_every_resource_call_of_the_gateway() -> None:
    gateway, orchestrator = SERVICES
    admin_only = {m.name for m in gateway.methods if m.name.endswith("ApiKey")} | {
        m.name for m in gateway.methods if m.name == "ListApiKeys"
    }
    # What only the gateway asks orchestrators: where there is room, and a tenant's usage
    # for its quotas.
    routing_only = {"GetCapacity", "GetTenantUsage"}
    gateway_calls = {m.name for m in gateway.methods} - admin_only
    orchestrator_calls = {m.name for m in orchestrator.methods} - routing_only
    assert gateway_calls == orchestrator_calls
    for name in gateway_calls:
        g = gateway.methods_by_name[name]
        o = orchestrator.methods_by_name[name]
        assert (g.input_type, g.output_type, g.server_streaming) == (
            o.input_type,
            o.output_type,
            o.server_streaming,
        )
