"""Fuzzing every request message of both services: the answer is never INTERNAL or UNKNOWN.

Each RPC of GatewayService (through the gateway, with a tenant's valid key)
and of OrchestratorService (straight to the orchestrator, with the gateway's
internal token) gets requests built from its descriptor with random field
values, and random or corrupted bytes sent through a raw channel. Whatever
the request, the server must answer with a deliberate status (or OK), and
stay healthy. The examples are derandomized, so CI runs the same ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import grpc
import pytest
from chaos_messages import corrupt_bytes, messages
from chaos_support import ChaosServer, Tenant
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox_sdk.api.v1 import gateway_service_pb2, orchestrator_service_pb2, requests_pb2

GATEWAY = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"]
ORCHESTRATOR = orchestrator_service_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
CALL_TIMEOUT_SECONDS = 3.0
STREAM_MESSAGES = 3
EXAMPLES = 12
CASES = [
    pytest.param(service, method, id=f"{service.name}.{method.name}")
    for service in (GATEWAY, ORCHESTRATOR)
    for method in service.methods
]
Caller = Callable[[bytes], grpc.StatusCode]


@pytest.fixture(scope="module")
def fuzz_tenant(chaos_server: ChaosServer) -> Iterator[tuple[Tenant, list[str]]]:
    """A tenant with an environment and a finished experiment, and ids worth trying."""
    tenant = chaos_server.tenant("fuzz")
    environment = tenant.create_environment()
    spec = requests_pb2.CreateExperimentRequest(environment_id=environment)
    spec.spec.model = "scripted"
    spec.spec.inputs.add().prompt = "hello"
    experiment = tenant.call("CreateExperiment", spec).experiment.id
    known = [environment, experiment, "scripted", "data/x.txt", "..", "/etc/passwd", "a" * 64]
    yield tenant, known
    chaos_server.delete_all_environments()


@contextlib.contextmanager
def _caller(
    server: ChaosServer, tenant: Tenant, service: ServiceDescriptor, method: MethodDescriptor
) -> Iterator[Caller]:
    if service is GATEWAY:
        channel = grpc.insecure_channel(server.target)
        metadata = tenant.metadata
    else:
        channel = grpc.insecure_channel(server.orchestrator_target)
        metadata = (
            ("authorization", f"Bearer {server.internal_token}"),
            ("x-sandbox-tenant", tenant.name),
        )
    path = f"/{service.full_name}/{method.name}"
    with channel:
        if method.server_streaming:
            stream = channel.unary_stream(path)

            def call_stream(payload: bytes) -> grpc.StatusCode:
                responses = stream(payload, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
                try:
                    for count, _ in enumerate(responses, start=1):
                        if count >= STREAM_MESSAGES:
                            responses.cancel()
                            return grpc.StatusCode.OK
                except grpc.RpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            yield call_stream
        else:
            unary = channel.unary_unary(path)

            def call_unary(payload: bytes) -> grpc.StatusCode:
                try:
                    unary(payload, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
                except grpc.RpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            yield call_unary


@pytest.mark.parametrize(("service", "method"), CASES)
def test_fuzzed_requests_never_get_internal_or_unknown(
    chaos_server: ChaosServer,
    fuzz_tenant: tuple[Tenant, list[str]],
    service: ServiceDescriptor,
    method: MethodDescriptor,
) -> None:
    tenant, known = fuzz_tenant
    request_type = method.input_type
    payloads = st.one_of(
        messages(request_type, known).map(lambda message: message.SerializeToString()),
        corrupt_bytes(request_type, known),
    )
    seen: dict[str, bytes] = {}
    with _caller(chaos_server, tenant, service, method) as call:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(payloads)
        def answers_deliberately(payload: bytes) -> None:
            code = call(payload)
            if code in FORBIDDEN:
                seen[code.name] = payload
            assert code not in FORBIDDEN, f"{method.name} answered {code.name}"

        answers_deliberately()
    assert not seen
    assert chaos_server.healthy()
