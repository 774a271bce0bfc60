"""Bearer credentials: interceptors (grpc_testing and a real aio channel), token refresh
before expiry, masked secrets."""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import grpc
import grpc.aio
import grpc_testing
from sdk_fake_gateway import API_KEY, FakeServer

from sandbox_sdk import ApiKey, RetryPolicy, Token
from sandbox_sdk.api.v1 import gateway_service_pb2, gateway_service_pb2_grpc, requests_pb2
from sandbox_sdk.auth import AsyncAuthInterceptor, AuthInterceptor, BearerAuth
from sandbox_sdk.client._sync.transport import Transport
from sandbox_sdk.config.settings import ClientSettings

SERVICE = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"]


class Rotating:
    def __init__(self) -> None:
        self.issued = 0

    def get_token(self) -> Token:
        self.issued += 1
        return Token(f"token-{self.issued}-abcdefgh", expires_at=1000.0 + 100 * self.issued)


def test_bearer_auth_refreshes_before_expiry() -> None:
    now = [900.0]
    provider = Rotating()
    auth = BearerAuth(provider, refresh_margin=30.0, clock=lambda: now[0])
    assert auth.metadata() == (("authorization", "Bearer token-1-abcdefgh"),)
    now[0] = 1069.0  # expires at 1100, refresh from 1070
    assert auth.metadata()[0][1].endswith("token-1-abcdefgh")
    now[0] = 1070.0
    assert auth.metadata()[0][1].endswith("token-2-abcdefgh")
    auth.invalidate()
    assert auth.metadata()[0][1].endswith("token-3-abcdefgh")
    assert provider.issued == 3


def test_secrets_are_masked() -> None:
    assert "abcdefgh" not in repr(ApiKey("sk-live-abcdefghijkl"))
    assert "abcdefgh" not in repr(Token("sk-live-abcdefghijkl"))
    assert "abcdefgh" not in repr(BearerAuth(ApiKey("sk-live-abcdefghijkl")))


class Outcome:
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


class Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: tuple[tuple[str, str], ...] | None
    credentials: None
    wait_for_ready: None
    compression: None


def test_interceptor_adds_the_header_and_keeps_other_metadata() -> None:
    interceptor = AuthInterceptor(BearerAuth(ApiKey("sk-abcdefghijkl")))
    sent: list[Any] = []

    def continuation(details: Any, request: Any) -> Outcome:
        sent.append(details)
        return Outcome(grpc.StatusCode.OK)

    details = Details(
        "/m", 1.0, (("x-request-id", "r1"), ("authorization", "old")), None, None, None
    )
    interceptor.intercept_unary_unary(continuation, details, object())  # type: ignore[arg-type]
    interceptor.intercept_unary_stream(continuation, details, object())  # type: ignore[arg-type]
    for call in sent:
        assert call.metadata == (
            ("x-request-id", "r1"),
            ("authorization", "Bearer sk-abcdefghijkl"),
        )
        assert call.timeout == 1.0


def test_interceptor_retries_once_with_a_new_token_when_rejected() -> None:
    provider = Rotating()
    interceptor = AuthInterceptor(BearerAuth(provider))
    tokens: list[str] = []

    def continuation(details: Any, request: Any) -> Outcome:
        tokens.append(dict(details.metadata)["authorization"])
        return Outcome(grpc.StatusCode.UNAUTHENTICATED)

    details = Details("/m", None, None, None, None, None)
    outcome = interceptor.intercept_unary_unary(continuation, details, object())  # type: ignore[arg-type]
    assert outcome.code() == grpc.StatusCode.UNAUTHENTICATED
    assert tokens == ["Bearer token-1-abcdefgh", "Bearer token-2-abcdefgh"]


def test_transport_retries_with_grpc_testing_channel(policy: RetryPolicy, clock: Any) -> None:
    fake = grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())
    transport = Transport(
        fake,
        settings=ClientSettings(target="fake", timeout=5.0),
        auth=BearerAuth(ApiKey(API_KEY)),
        retry=policy,
    )
    method = SERVICE.methods_by_name["GetEnvironment"]
    results: list[Any] = []
    request = requests_pb2.GetEnvironmentRequest(environment_id="env-o1-0000000000000001")
    caller = threading.Thread(
        target=lambda: results.append(transport.unary(transport.rpcs["GetEnvironment"], request))
    )
    caller.start()
    for _ in range(2):
        metadata, seen, rpc = fake.take_unary_unary(method)
        assert ("authorization", f"Bearer {API_KEY}") in metadata
        assert seen == request
        rpc.terminate(None, (), grpc.StatusCode.UNAVAILABLE, "down")
    _, _, rpc = fake.take_unary_unary(method)
    rpc.terminate(requests_pb2.GetEnvironmentResponse(), (), grpc.StatusCode.OK, "")
    caller.join()
    assert len(results) == 1
    assert clock.sleeps == [0.5, 1.0]


async def test_async_interceptor_against_a_real_server(server: FakeServer) -> None:
    interceptor = AsyncAuthInterceptor(BearerAuth(ApiKey(API_KEY)))
    async with grpc.aio.insecure_channel(server.target, interceptors=[interceptor]) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        response = await stub.ListModels(requests_pb2.ListModelsRequest())
        assert response.models[0].name == "smollm2"
