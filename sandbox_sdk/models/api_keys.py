"""API keys: their scopes and metadata (the secret is shown only once)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sandbox_sdk.api.v1 import gateway_service_pb2
from sandbox_sdk.models._enums import enum_numbers, enum_table
from sandbox_sdk.utils.units import from_timestamp_pb


class ApiKeyScope(enum.StrEnum):
    """What an API key allows.

    ``ADMIN`` adds managing the keys of the key's own tenant to ``READ`` and
    ``WRITE``; ``OPERATOR`` manages the keys of every tenant, and only an
    ``OPERATOR`` key creates or revokes ``OPERATOR`` keys.
    """

    UNSPECIFIED = "UNSPECIFIED"
    READ = "READ"
    WRITE = "WRITE"
    ADMIN = "ADMIN"
    OPERATOR = "OPERATOR"


_SCOPES = enum_table(gateway_service_pb2.ApiKeyScope.items(), "API_KEY_SCOPE_", ApiKeyScope)
SCOPE_NUMBERS = enum_numbers(_SCOPES)


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """An API key's metadata."""

    id: str
    tenant: str
    scopes: tuple[ApiKeyScope, ...] = ()
    display_name: str = ""
    create_time: datetime | None = None
    expire_time: datetime | None = None
    revoke_time: datetime | None = None

    @property
    def active(self) -> bool:
        """Whether the key is neither revoked nor expired (by the local clock)."""
        if self.revoke_time is not None:
            return False
        return self.expire_time is None or self.expire_time > datetime.now(tz=UTC)

    @classmethod
    def from_proto(cls, message: gateway_service_pb2.ApiKey) -> ApiKeyInfo:
        """Converts the wire form."""
        return cls(
            id=message.id,
            tenant=message.tenant,
            scopes=tuple(_SCOPES.get(s, ApiKeyScope.UNSPECIFIED) for s in message.scopes),
            display_name=message.display_name,
            create_time=from_timestamp_pb(message.create_time),
            expire_time=from_timestamp_pb(message.expire_time),
            revoke_time=from_timestamp_pb(message.revoke_time),
        )


@dataclass(frozen=True, slots=True)
class CreatedApiKey:
    """A new key and its secret; store the secret now, it is never shown again."""

    key: ApiKeyInfo
    secret: str = field(repr=False)
