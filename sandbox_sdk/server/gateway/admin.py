"""The API key RPCs: CreateApiKey, ListApiKeys, RevokeApiKey.

An ``admin`` key manages the keys of its own tenant; an ``operator`` key those
of every tenant, and only an operator key creates or revokes operator keys.
A request naming another tenant is PERMISSION_DENIED; a key id of another
tenant is NOT_FOUND, as another tenant's environments are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from sandbox_sdk.api.v1 import gateway_service_pb2 as gw
from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server import page_tokens
from sandbox_sdk.server.gateway.api_keys import (
    KEY_ID_PATTERN,
    ApiKeyRecord,
    ApiKeyStore,
    RequestIdReusedError,
    Scope,
)
from sandbox_sdk.server.status import ServiceError, invalid_argument, not_found
from sandbox_sdk.utils.units import to_timestamp_pb

TENANT_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MAX_TEXT = 200
_DEFAULT_PAGE_SIZE = 50
_MAX_PAGE_SIZE = 1000
_SCOPE_BY_PROTO = {
    gw.API_KEY_SCOPE_READ: Scope.READ,
    gw.API_KEY_SCOPE_WRITE: Scope.WRITE,
    gw.API_KEY_SCOPE_ADMIN: Scope.ADMIN,
    gw.API_KEY_SCOPE_OPERATOR: Scope.OPERATOR,
}
_PROTO_BY_SCOPE = {scope: value for value, scope in _SCOPE_BY_PROTO.items()}


def api_key_proto(record: ApiKeyRecord) -> gw.ApiKey:
    """The wire form of a key's metadata (never its hash)."""
    key = gw.ApiKey(
        id=record.id,
        tenant=record.tenant,
        scopes=sorted(_PROTO_BY_SCOPE[s] for s in record.scopes),
        display_name=record.display_name,
        create_time=to_timestamp_pb(record.create_time),
    )
    if record.expire_time is not None:
        key.expire_time.CopyFrom(to_timestamp_pb(record.expire_time))
    if record.revoke_time is not None:
        key.revoke_time.CopyFrom(to_timestamp_pb(record.revoke_time))
    return key


def _listing_position(position: Any) -> tuple[float, str]:
    create_time, key_id = position
    return float(create_time), str(key_id)


@dataclass(frozen=True, slots=True)
class Administrator:
    """Who asks: the tenant of the calling key, its id, and whether it is an operator."""

    tenant: str
    key_id: str
    operator: bool


def parse_request(raw: bytes, message_type: type[Message]) -> Message:
    """The request decoded, or INVALID_ARGUMENT saying the bytes are not that message."""
    try:
        return message_type.FromString(raw)
    except DecodeError:
        name = message_type.DESCRIPTOR.full_name
        raise invalid_argument(
            [("request", f"the bytes are not a valid {name}; send the message the .proto defines")]
        ) from None


def _other_tenant(admin: Administrator, tenant: str, action: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.PERMISSION_DENIED,
        ErrorReason.CROSS_TENANT_DENIED,
        f"key {admin.key_id} administers tenant {admin.tenant!r} only and cannot {action} of"
        f" tenant {tenant!r}; use an API key of that tenant with the admin scope, or an"
        " operator key",
        metadata={"tenant": admin.tenant, "required_scope": str(Scope.OPERATOR)},
    )


def _operator_only(admin: Administrator, action: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.PERMISSION_DENIED,
        ErrorReason.SCOPE_MISSING,
        f"only an operator key can {action}; key {admin.key_id} has the admin scope of tenant"
        f" {admin.tenant!r}",
        metadata={"required_scope": str(Scope.OPERATOR)},
    )


def _create_violations(request: gw.CreateApiKeyRequest, tenant: str) -> list[tuple[str, str]]:
    violations: list[tuple[str, str]] = []
    if not TENANT_PATTERN.match(tenant):
        violations.append(("tenant", "use 1 to 63 lower-case letters, digits and inner dashes"))
    if not request.scopes:
        violations.append(("scopes", "give at least one of READ, WRITE, ADMIN, OPERATOR"))
    for index, value in enumerate(request.scopes):
        if value not in _SCOPE_BY_PROTO:
            violations.append((f"scopes[{index}]", "must be READ, WRITE, ADMIN or OPERATOR"))
    if request.ttl.seconds < 0 or request.ttl.nanos < 0:
        violations.append(("ttl", "must be zero (never expires) or positive"))
    if len(request.display_name) > _MAX_TEXT:
        violations.append(("display_name", f"use at most {_MAX_TEXT} characters"))
    if len(request.request_id) > _MAX_TEXT:
        violations.append(("request_id", f"use at most {_MAX_TEXT} characters, e.g. a UUID"))
    return violations


class ApiKeyAdmin:
    """Creates, lists and revokes API keys in the store, within the caller's reach."""

    def __init__(
        self, store: ApiKeyStore, on_revoked: Callable[[str], None] = lambda key_id: None
    ) -> None:
        self._store = store
        self._on_revoked = on_revoked

    def create(
        self, request: gw.CreateApiKeyRequest, admin: Administrator
    ) -> gw.CreateApiKeyResponse:
        """CreateApiKey: a new key; its secret is only in this response."""
        tenant = request.tenant or admin.tenant
        if tenant != admin.tenant and not admin.operator:
            raise _other_tenant(admin, tenant, "create keys")
        violations = _create_violations(request, tenant)
        if violations:
            raise invalid_argument(violations)
        scopes = {_SCOPE_BY_PROTO[value] for value in request.scopes}
        if Scope.OPERATOR in scopes and not admin.operator:
            raise _operator_only(admin, "create an operator key")
        try:
            created = self._store.create(
                tenant,
                scopes,
                display_name=request.display_name,
                ttl_seconds=request.ttl.ToTimedelta().total_seconds(),
                # A retry returns the first key only to the key that created it.
                request_id=f"{admin.key_id}/{request.request_id}" if request.request_id else "",
            )
        except RequestIdReusedError:
            raise invalid_argument(
                [
                    (
                        "request_id",
                        "a key was created with this request_id and its secret cannot be"
                        " shown again; use a new request_id",
                    )
                ]
            ) from None
        return gw.CreateApiKeyResponse(api_key=api_key_proto(created.record), secret=created.secret)

    def list(self, request: gw.ListApiKeysRequest, admin: Administrator) -> gw.ListApiKeysResponse:
        """ListApiKeys: newest first, without secrets; only the caller's tenant for an admin."""
        tenant = request.tenant
        if not admin.operator:
            if tenant and tenant != admin.tenant:
                raise _other_tenant(admin, tenant, "list the keys")
            tenant = admin.tenant
        if not 0 <= request.page_size <= _MAX_PAGE_SIZE:
            raise invalid_argument(
                [("page_size", f"use 0 (for {_DEFAULT_PAGE_SIZE}) to {_MAX_PAGE_SIZE}")]
            )
        page_size = request.page_size or _DEFAULT_PAGE_SIZE
        scope = (tenant, request.show_revoked)
        before = page_tokens.decode(request.page_token, "api_keys", scope, _listing_position)
        records = self._store.list(
            tenant=tenant,
            include_inactive=request.show_revoked,
            limit=page_size + 1,
            before=before,
        )
        page = records[:page_size]
        next_token = ""
        if len(records) > page_size:
            next_token = page_tokens.encode("api_keys", scope, [page[-1].create_time, page[-1].id])
        return gw.ListApiKeysResponse(
            api_keys=[api_key_proto(r) for r in page], next_page_token=next_token
        )

    def revoke(
        self, request: gw.RevokeApiKeyRequest, admin: Administrator
    ) -> gw.RevokeApiKeyResponse:
        """RevokeApiKey: the key stops working at once in this gateway."""
        key_id = request.api_key_id
        if not KEY_ID_PATTERN.match(key_id):
            raise invalid_argument(
                [("api_key_id", "give the key's id, sk_ and 16 hex digits (see ListApiKeys)")]
            )
        found = self._store.lookup(key_id)
        if found is None or (found.tenant != admin.tenant and not admin.operator):
            where = "" if admin.operator else f" in tenant {admin.tenant!r}"
            raise not_found(
                ErrorReason.API_KEY_NOT_FOUND,
                f"there is no API key {key_id}{where}; ListApiKeys shows the keys you can revoke",
            )
        if found.is_operator and not admin.operator:
            raise _operator_only(admin, "revoke an operator key")
        record = self._store.revoke(key_id)
        self._on_revoked(key_id)
        if record is None:
            raise not_found(ErrorReason.API_KEY_NOT_FOUND, f"there is no API key {key_id}")
        return gw.RevokeApiKeyResponse(api_key=api_key_proto(record))
