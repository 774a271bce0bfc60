"""Authentication, scopes and API key administration at the gateway (moved from tests/gateway).

The cross-tenant rules of key administration (admin vs operator keys) are in
test_security_scopes.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable

import grpc
import pytest
from gateway_callers import Caller, Stack
from gateway_testkit import detail, reason
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandbox_sdk.api.v1 import gateway_service_pb2 as gw
from sandbox_sdk.api.v1 import requests_pb2
from sandbox_sdk.server.gateway.api_keys import Scope

CREATE = requests_pb2.CreateEnvironmentRequest()
UNKNOWN_KEY = "sk_0123456789abcdef_" + "A" * 43


async def _revoked_key(stack: Stack) -> str:
    created = stack.gateway.keys.create("team-a", [Scope.READ, Scope.WRITE])
    stack.gateway.keys.revoke(created.record.id)
    return created.secret


async def _expired_key(stack: Stack) -> str:
    created = stack.gateway.keys.create("team-a", [Scope.READ, Scope.WRITE], ttl_seconds=0.05)
    await asyncio.sleep(0.1)
    return created.secret


async def _read_only_key(stack: Stack) -> str:
    return stack.gateway.keys.create("team-a", [Scope.READ]).secret


@pytest.mark.parametrize(
    ("metadata_for", "code", "expected_reason"),
    [
        (lambda s: (), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING"),
        (
            lambda s: (("authorization", "Basic abc"),),
            grpc.StatusCode.UNAUTHENTICATED,
            "API_KEY_MALFORMED",
        ),
        (
            lambda s: (("authorization", "Bearer not-a-key"),),
            grpc.StatusCode.UNAUTHENTICATED,
            "API_KEY_MALFORMED",
        ),
        (
            lambda s: (("authorization", f"Bearer {UNKNOWN_KEY}"),),
            grpc.StatusCode.UNAUTHENTICATED,
            "API_KEY_INVALID",
        ),
        (
            lambda s: (("authorization", f"Bearer {s.caller.key[:-1]}B"),),
            grpc.StatusCode.UNAUTHENTICATED,
            "API_KEY_INVALID",
        ),
        (_revoked_key, grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED"),
        (_expired_key, grpc.StatusCode.UNAUTHENTICATED, "API_KEY_EXPIRED"),
        (_read_only_key, grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING"),
    ],
    ids=[
        "missing",
        "not-bearer",
        "malformed",
        "unknown",
        "wrong-secret",
        "revoked",
        "expired",
        "scope",
    ],
)
async def test_bad_credentials_are_refused_without_side_effects(
    stack: Stack,
    metadata_for: Callable[[Stack], object],
    code: grpc.StatusCode,
    expected_reason: str,
) -> None:
    produced = metadata_for(stack)
    if asyncio.iscoroutine(produced):
        produced = (("authorization", f"Bearer {await produced}"),)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.caller.stub.CreateEnvironment(CREATE, metadata=produced)
    assert caught.value.code() == code
    assert reason(caught.value) == expected_reason
    calls = stack.orchestrator.state.calls
    assert calls["CreateEnvironment"] == calls["GetTenantUsage"] == calls["GetCapacity"] == 0
    assert calls["ListEnvironments"] == 0
    assert stack.orchestrator.state.environments == {}


async def test_a_valid_key_reaches_the_orchestrator_as_its_tenant(stack: Stack) -> None:
    response = await stack.caller.stub.CreateEnvironment(
        CREATE,
        metadata=(*stack.caller.metadata, ("x-sandbox-tenant", "someone-else")),
    )
    seen = stack.orchestrator.state.metadata["CreateEnvironment"]
    assert seen["x-sandbox-tenant"] == "team-a"
    assert "Bearer" not in seen.get("authorization", "")
    assert stack.orchestrator.state.environments[response.environment.id][0] == "team-a"


async def test_revocation_takes_effect_at_once_despite_the_cache(
    stack: Stack, caller_for: Callable[..., Caller]
) -> None:
    admin = caller_for(stack.gateway, "ops", (Scope.OPERATOR,))
    user = stack.caller
    await user.stub.ListEnvironments(requests_pb2.ListEnvironmentsRequest(), metadata=user.metadata)
    key_id = "_".join(user.key.split("_")[:2])
    revoked = await admin.stub.RevokeApiKey(
        gw.RevokeApiKeyRequest(api_key_id=key_id), metadata=admin.metadata
    )
    assert revoked.api_key.HasField("revoke_time")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await user.stub.ListEnvironments(
            requests_pb2.ListEnvironmentsRequest(), metadata=user.metadata
        )
    assert reason(caught.value) == "API_KEY_REVOKED"


async def test_admin_creates_lists_and_revokes_keys(
    stack: Stack, caller_for: Callable[..., Caller]
) -> None:
    admin = caller_for(stack.gateway, "ops", (Scope.OPERATOR,))
    created = await admin.stub.CreateApiKey(
        gw.CreateApiKeyRequest(
            tenant="team-b",
            scopes=[gw.API_KEY_SCOPE_READ, gw.API_KEY_SCOPE_WRITE],
            display_name="ci",
            ttl=duration_pb2.Duration(seconds=3600),
            request_id="req-1",
        ),
        metadata=admin.metadata,
    )
    assert created.secret.startswith(created.api_key.id + "_")
    assert len(created.secret) >= len("sk_") + 16 + 1 + 43
    assert created.api_key.HasField("expire_time")
    again = await admin.stub.CreateApiKey(
        gw.CreateApiKeyRequest(tenant="team-b", scopes=[gw.API_KEY_SCOPE_READ], request_id="req-1"),
        metadata=admin.metadata,
    )
    assert again.api_key.id == created.api_key.id
    assert again.secret == created.secret

    new_key = (("authorization", f"Bearer {created.secret}"),)
    await admin.stub.ListEnvironments(requests_pb2.ListEnvironmentsRequest(), metadata=new_key)

    listed = await admin.stub.ListApiKeys(
        gw.ListApiKeysRequest(tenant="team-b"), metadata=admin.metadata
    )
    assert [k.id for k in listed.api_keys] == [created.api_key.id]
    assert created.secret not in str(listed)

    await admin.stub.RevokeApiKey(
        gw.RevokeApiKeyRequest(api_key_id=created.api_key.id), metadata=admin.metadata
    )
    active = await admin.stub.ListApiKeys(
        gw.ListApiKeysRequest(tenant="team-b"), metadata=admin.metadata
    )
    assert list(active.api_keys) == []
    everything = await admin.stub.ListApiKeys(
        gw.ListApiKeysRequest(tenant="team-b", show_revoked=True), metadata=admin.metadata
    )
    assert everything.api_keys[0].HasField("revoke_time")


async def test_list_api_keys_pages_newest_first(
    stack: Stack, caller_for: Callable[..., Caller]
) -> None:
    admin = caller_for(stack.gateway, "ops", (Scope.OPERATOR,))
    made = [stack.gateway.keys.create("paged", [Scope.READ]).record.id for _ in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await admin.stub.ListApiKeys(
            gw.ListApiKeysRequest(tenant="paged", page_size=2, page_token=token),
            metadata=admin.metadata,
        )
        seen.extend(k.id for k in page.api_keys)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(made))


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (gw.CreateApiKeyRequest(tenant="Bad Tenant", scopes=[gw.API_KEY_SCOPE_READ]), "tenant"),
        (gw.CreateApiKeyRequest(tenant="ok"), "scopes"),
        (gw.CreateApiKeyRequest(tenant="ok", scopes=[0]), "scopes[0]"),
        (
            gw.CreateApiKeyRequest(tenant="ok", scopes=[1], ttl=duration_pb2.Duration(seconds=-1)),
            "ttl",
        ),
    ],
)
async def test_create_api_key_validates_its_request(
    stack: Stack,
    caller_for: Callable[..., Caller],
    request_: gw.CreateApiKeyRequest,
    field: str,
) -> None:
    admin = caller_for(stack.gateway, "ops", (Scope.OPERATOR,))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.stub.CreateApiKey(request_, metadata=admin.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = detail(caught.value, error_details_pb2.BadRequest).field_violations
    assert [v.field for v in violations] == [field]


async def test_key_admin_needs_the_admin_scope(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.caller.stub.ListApiKeys(gw.ListApiKeysRequest(), metadata=stack.caller.metadata)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(caught.value) == "SCOPE_MISSING"


async def test_revoking_an_unknown_key_is_not_found(
    stack: Stack, caller_for: Callable[..., Caller]
) -> None:
    admin = caller_for(stack.gateway, "ops", (Scope.OPERATOR,))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.stub.RevokeApiKey(
            gw.RevokeApiKeyRequest(api_key_id="sk_0000000000000000"), metadata=admin.metadata
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(caught.value) == "API_KEY_NOT_FOUND"


async def test_keys_are_stored_only_as_hashes(stack: Stack) -> None:
    database = sqlite3.connect(stack.gateway.config.db_path)
    try:
        dump = "\n".join(database.iterdump())
    finally:
        database.close()
    secret_part = stack.caller.key.split("_", 2)[2]
    assert "_".join(stack.caller.key.split("_")[:2]) in dump
    assert secret_part not in dump


async def test_health_needs_no_key(stack: Stack) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{stack.gateway.port}")
    try:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="sandbox.v1.GatewayService")
        )
    finally:
        await channel.close()
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_keys_never_appear_in_logs(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await stack.caller.stub.ListEnvironments(
        requests_pb2.ListEnvironmentsRequest(), metadata=stack.caller.metadata
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.caller.stub.ListEnvironments(
            requests_pb2.ListEnvironmentsRequest(),
            metadata=(("authorization", f"Bearer {stack.caller.key}x"),),
        )
    access = [r.getMessage() for r in caplog.records if r.name.endswith("gateway.access")]
    assert any("method=ListEnvironments code=OK tenant=team-a" in line for line in access)
    assert any("code=UNAUTHENTICATED" in line for line in access)
    assert all(stack.caller.key.split("_", 2)[2] not in r.getMessage() for r in caplog.records)
