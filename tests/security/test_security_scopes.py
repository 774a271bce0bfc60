"""Issue 9, class 8: an admin key administers its own tenant only; operators administer all.

The attacker holds an ``admin`` key of tenant ``team-a`` and tries to reach the
keys of other tenants, or to become an operator: by naming another tenant, by
revoking another tenant's key by id, by listing, by forging a page token, by
replaying another creator's request id, by minting or revoking operator keys.
Every attempt is refused and changes nothing; an operator key may do it all.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_support import EmbeddedStack
from gateway_callers import Caller, Stack
from gateway_testkit import reason

from sandbox_sdk import ApiKeyScope, NotFoundError, PermissionDeniedError, SandboxClient
from sandbox_sdk.api.v1 import gateway_service_pb2 as gw
from sandbox_sdk.api.v1 import requests_pb2
from sandbox_sdk.server.gateway.api_keys import Scope
from sandbox_sdk.server.gateway.bootstrap import ensure_admin_key

READ, WRITE, ADMIN, OPERATOR = (
    gw.API_KEY_SCOPE_READ,
    gw.API_KEY_SCOPE_WRITE,
    gw.API_KEY_SCOPE_ADMIN,
    gw.API_KEY_SCOPE_OPERATOR,
)
MakeCaller = Callable[..., Caller]


class Keys:
    """Tenant team-a's admin (the attacker), team-b's user key, and an operator."""

    def __init__(self, stack: Stack, caller_for: MakeCaller) -> None:
        self.gateway = stack.gateway
        self.attacker = caller_for(stack.gateway, "team-a", (Scope.ADMIN,))
        self.operator = caller_for(stack.gateway, "ops", (Scope.OPERATOR,))
        self.victim = caller_for(stack.gateway, "team-b", (Scope.READ, Scope.WRITE))
        self.victim_id = _key_id(self.victim.key)

    async def tenant_keys(self, tenant: str) -> list[gw.ApiKey]:
        """Every key of ``tenant``, revoked too, as the operator sees them."""
        listed = await self.operator.stub.ListApiKeys(
            gw.ListApiKeysRequest(tenant=tenant, show_revoked=True), metadata=self.operator.metadata
        )
        return list(listed.api_keys)

    async def still_works(self, caller: Caller) -> bool:
        await caller.stub.ListEnvironments(
            requests_pb2.ListEnvironmentsRequest(), metadata=caller.metadata
        )
        return True


def _key_id(secret: str) -> str:
    return "_".join(secret.split("_")[:2])


@pytest.fixture
def keys(stack: Stack, caller_for: MakeCaller) -> Keys:
    return Keys(stack, caller_for)


async def _refused(call: Any, code: grpc.StatusCode, expected_reason: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    assert reason(caught.value) == expected_reason
    return caught.value.details() or ""


# -- creating keys -----------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", ["team-b", "default", "ops", "team-a-2", "TEAM-A", "team-a "])
@pytest.mark.parametrize(
    "scopes", [[READ], [READ, WRITE], [ADMIN], [OPERATOR]], ids=["r", "rw", "admin", "operator"]
)
async def test_an_admin_cannot_create_keys_for_another_tenant(
    keys: Keys, tenant: str, scopes: list[int]
) -> None:
    before = await keys.tenant_keys(tenant)
    details = await _refused(
        keys.attacker.stub.CreateApiKey(
            gw.CreateApiKeyRequest(tenant=tenant, scopes=scopes), metadata=keys.attacker.metadata
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "CROSS_TENANT_DENIED",
    )
    assert "team-a" in details
    assert "operator" in details
    assert await keys.tenant_keys(tenant) == before


@pytest.mark.parametrize(
    "scopes", [[OPERATOR], [READ, OPERATOR], [ADMIN, OPERATOR], [OPERATOR, OPERATOR]]
)
@pytest.mark.parametrize("tenant", ["team-a", ""])
async def test_an_admin_cannot_mint_an_operator_key(
    keys: Keys, scopes: list[int], tenant: str
) -> None:
    await _refused(
        keys.attacker.stub.CreateApiKey(
            gw.CreateApiKeyRequest(tenant=tenant, scopes=scopes), metadata=keys.attacker.metadata
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "SCOPE_MISSING",
    )
    assert all(OPERATOR not in key.scopes for key in await keys.tenant_keys("team-a"))


async def test_an_admin_manages_its_own_tenant_and_its_keys_stay_there(keys: Keys) -> None:
    made = await keys.attacker.stub.CreateApiKey(
        gw.CreateApiKeyRequest(scopes=[ADMIN]), metadata=keys.attacker.metadata
    )
    assert made.api_key.tenant == "team-a"  # an empty tenant means the caller's
    second_admin = Caller(keys.attacker.stub, made.secret, "team-a")
    await _refused(
        second_admin.stub.CreateApiKey(
            gw.CreateApiKeyRequest(tenant="team-b", scopes=[READ]), metadata=second_admin.metadata
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "CROSS_TENANT_DENIED",
    )


async def test_a_request_id_replays_only_for_the_key_that_used_it(keys: Keys) -> None:
    """A creator's request id, reused by another tenant's admin, must not return its secret."""
    victims = await keys.operator.stub.CreateApiKey(
        gw.CreateApiKeyRequest(tenant="team-b", scopes=[READ, WRITE], request_id="retry-1"),
        metadata=keys.operator.metadata,
    )
    replayed = await keys.attacker.stub.CreateApiKey(
        gw.CreateApiKeyRequest(tenant="team-a", scopes=[READ], request_id="retry-1"),
        metadata=keys.attacker.metadata,
    )
    assert replayed.secret != victims.secret
    assert replayed.api_key.tenant == "team-a"
    again = await keys.operator.stub.CreateApiKey(
        gw.CreateApiKeyRequest(tenant="team-b", scopes=[READ, WRITE], request_id="retry-1"),
        metadata=keys.operator.metadata,
    )
    assert again.secret == victims.secret  # the creator's own retry still works


# -- listing keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", ["team-b", "ops", "default", "TEAM-A"])
async def test_an_admin_cannot_list_another_tenants_keys(keys: Keys, tenant: str) -> None:
    await _refused(
        keys.attacker.stub.ListApiKeys(
            gw.ListApiKeysRequest(tenant=tenant, show_revoked=True),
            metadata=keys.attacker.metadata,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "CROSS_TENANT_DENIED",
    )


def _cursor(create_time: float, key_id: str) -> str:
    """The unsigned cursor the gateway once issued, as an attacker would write it."""
    return "k1." + base64.urlsafe_b64encode(json.dumps([create_time, key_id]).encode()).decode()


async def test_an_admins_listing_shows_only_its_own_tenant(keys: Keys) -> None:
    keys.gateway.keys.create("team-b", [Scope.ADMIN])
    for show_revoked in (False, True):
        listed = await keys.attacker.stub.ListApiKeys(
            gw.ListApiKeysRequest(show_revoked=show_revoked, page_size=1000),
            metadata=keys.attacker.metadata,
        )
        assert {key.tenant for key in listed.api_keys} == {"team-a"}
        assert keys.victim_id not in str(listed)


async def test_a_page_token_is_refused_when_forged_or_carried_to_another_tenant(
    keys: Keys,
) -> None:
    for _ in range(2):
        keys.gateway.keys.create("team-b", [Scope.READ])
    victims_page = await keys.operator.stub.ListApiKeys(
        gw.ListApiKeysRequest(tenant="team-b", page_size=1), metadata=keys.operator.metadata
    )
    stolen = victims_page.next_page_token
    assert stolen
    edited = stolen[:-3] + ("AAA" if not stolen.endswith("AAA") else "BBB")
    for token in [
        _cursor(4e9, "sk_ffffffffffffffff"),
        _cursor(4e9, keys.victim_id),
        stolen,
        edited,
    ]:
        details = await _refused(
            keys.attacker.stub.ListApiKeys(
                gw.ListApiKeysRequest(page_token=token, page_size=1000),
                metadata=keys.attacker.metadata,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        assert "team-b" not in details
    next_page = await keys.operator.stub.ListApiKeys(
        gw.ListApiKeysRequest(tenant="team-b", page_size=1, page_token=stolen),
        metadata=keys.operator.metadata,
    )
    assert [key.tenant for key in next_page.api_keys] == ["team-b"]


# -- revoking keys -----------------------------------------------------------------------------


async def test_an_admin_cannot_revoke_another_tenants_key(keys: Keys) -> None:
    targets = [keys.victim_id, _key_id(keys.operator.key)]
    for key_id in targets:
        details = await _refused(
            keys.attacker.stub.RevokeApiKey(
                gw.RevokeApiKeyRequest(api_key_id=key_id), metadata=keys.attacker.metadata
            ),
            grpc.StatusCode.NOT_FOUND,
            "API_KEY_NOT_FOUND",
        )
        assert "team-b" not in details
    assert await keys.still_works(keys.victim)
    assert await keys.still_works(keys.operator)
    assert all(not key.HasField("revoke_time") for key in await keys.tenant_keys("team-b"))


async def test_an_admin_cannot_revoke_an_operator_key_even_in_its_own_tenant(
    keys: Keys, caller_for: MakeCaller
) -> None:
    operator_of_a = caller_for(keys.gateway, "team-a", (Scope.OPERATOR,))
    await _refused(
        keys.attacker.stub.RevokeApiKey(
            gw.RevokeApiKeyRequest(api_key_id=_key_id(operator_of_a.key)),
            metadata=keys.attacker.metadata,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "SCOPE_MISSING",
    )
    assert await keys.still_works(operator_of_a)


async def test_an_admin_revokes_keys_of_its_own_tenant(keys: Keys, caller_for: MakeCaller) -> None:
    colleague = caller_for(keys.gateway, "team-a", (Scope.READ,))
    revoked = await keys.attacker.stub.RevokeApiKey(
        gw.RevokeApiKeyRequest(api_key_id=_key_id(colleague.key)), metadata=keys.attacker.metadata
    )
    assert revoked.api_key.HasField("revoke_time")


# -- the operator ------------------------------------------------------------------------------


async def test_an_operator_administers_every_tenant(keys: Keys) -> None:
    operator = keys.operator
    made = await operator.stub.CreateApiKey(
        gw.CreateApiKeyRequest(tenant="team-c", scopes=[OPERATOR]), metadata=operator.metadata
    )
    assert list(made.api_key.scopes) == [OPERATOR]
    everything = await operator.stub.ListApiKeys(
        gw.ListApiKeysRequest(page_size=1000), metadata=operator.metadata
    )
    assert {"team-a", "team-b", "team-c", "ops"} <= {key.tenant for key in everything.api_keys}
    revoked = await operator.stub.RevokeApiKey(
        gw.RevokeApiKeyRequest(api_key_id=keys.victim_id), metadata=operator.metadata
    )
    assert revoked.api_key.HasField("revoke_time")


async def test_an_old_bootstrap_admin_key_is_replaced_by_an_operator_key(
    stack: Stack, tmp_path: Path
) -> None:
    """A key file from before the operator scope holds a tenant-bound admin key."""
    old = stack.gateway.keys.create("default", [Scope.READ, Scope.WRITE, Scope.ADMIN])
    key_file = tmp_path / "admin.key"
    key_file.write_text(old.secret + "\n")
    new = ensure_admin_key(stack.gateway.authenticator, stack.gateway.keys, key_file)
    assert new != old.secret
    assert stack.gateway.authenticator.verify_key(new).is_operator
    assert stack.gateway.keys.lookup(old.record.id).revoke_time is not None  # type: ignore[union-attr]
    assert ensure_admin_key(stack.gateway.authenticator, stack.gateway.keys, key_file) == new


# -- through the SDK, against the real server ------------------------------------------------------


def test_the_sdk_raises_typed_errors_for_cross_tenant_administration(
    embedded: EmbeddedStack, operator_client: SandboxClient
) -> None:
    admin_key = operator_client.create_api_key(tenant="sdk-a", scopes=["admin"]).secret
    victim = operator_client.create_api_key(tenant="sdk-b", scopes=["read"])
    with embedded.client(api_key=admin_key) as admin:
        with pytest.raises(PermissionDeniedError) as denied:
            admin.create_api_key(tenant="sdk-b")
        assert denied.value.reason == "CROSS_TENANT_DENIED"
        with pytest.raises(PermissionDeniedError):
            list(admin.list_api_keys(tenant="sdk-b"))
        with pytest.raises(NotFoundError):
            admin.revoke_api_key(victim.key.id)
        with pytest.raises(PermissionDeniedError) as minted:
            admin.create_api_key(scopes=[ApiKeyScope.OPERATOR])
        assert minted.value.reason == "SCOPE_MISSING"
        own = admin.create_api_key(scopes=["read"])
        assert own.key.tenant == "sdk-a"
        assert {key.tenant for key in admin.list_api_keys(show_revoked=True)} == {"sdk-a"}
    [still] = operator_client.list_api_keys(tenant="sdk-b")
    assert still.active
