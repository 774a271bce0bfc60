"""Who is calling: the API key in ``authorization: Bearer <key>`` checked against the store."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable

import grpc

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.gateway.api_keys import (
    ApiKeyRecord,
    ApiKeyStore,
    Scope,
    hash_key,
    key_id_of,
)
from sandbox_sdk.server.status import ServiceError

AUTHORIZATION_KEY = "authorization"
_PROVED_SIZE = 4096
_BEARER = "Bearer "
MISSING_KEY_MESSAGE = (
    "no API key was sent: set SANDBOX_API_KEY (or api_key / api_key_file in the client"
    " config), or send `authorization: Bearer <key>` metadata. On the machine running"
    " `sandbox-sdk serve`, leave the target unset: the SDK then uses the server's Unix socket"
    " <data_dir>/gateway.sock and sends the local admin key there by itself (never over TCP)"
)


class AuthenticationFailedError(ServiceError):
    """UNAUTHENTICATED with one of the API_KEY_* reasons."""

    def __init__(self, reason: ErrorReason, message: str) -> None:
        super().__init__(grpc.StatusCode.UNAUTHENTICATED, reason, message)


class Authenticator:
    """Turns the presented API key into its record, or raises UNAUTHENTICATED.

    Failures are reported to ``on_failure`` (for metrics) by reason; the key
    itself never leaves this class.
    """

    def __init__(
        self, store: ApiKeyStore, on_failure: Callable[[str], None] = lambda reason: None
    ) -> None:
        self._store = store
        self._on_failure = on_failure
        # The record each ``authorization`` value last proved, so that a repeated call
        # skips parsing and hashing its key. An entry stands only while the store's
        # cached record is that very object: a revoked key, or one whose cache entry
        # aged out or was re-read, is checked in full again. Only keys that passed are
        # kept, so wrong keys cannot fill it; variants of a good one could, which the
        # size bound stops.
        self._proved: dict[str, ApiKeyRecord] = {}

    def authenticate(self, authorization: str) -> ApiKeyRecord:
        """The key record for an ``authorization`` metadata value."""
        try:
            return self._verify(authorization)
        except AuthenticationFailedError as error:
            self._on_failure(error.reason)
            raise

    async def authenticate_async(self, authorization: str) -> ApiKeyRecord:
        """:meth:`authenticate` for the event loop: a lookup the key cache cannot answer
        goes to the database on a thread, so a slow database stalls no other call."""
        try:
            proved = self._proved.get(authorization)
            if proved is not None and self._store.cached(proved.id) is proved:
                return _in_force(proved)
            key = self._bearer_key(authorization)
            key_id = self._key_id(key)
            record = self._store.cached(key_id)
            if record is None:
                record = await asyncio.to_thread(self._store.lookup, key_id)
            record = self._checked(key, record)
            if len(self._proved) >= _PROVED_SIZE:
                self._proved.clear()
            self._proved[authorization] = record
            return record
        except AuthenticationFailedError as error:
            self._on_failure(error.reason)
            raise

    def verify_key(self, key: str) -> ApiKeyRecord:
        """The record of a bare key (no ``Bearer``), or raises UNAUTHENTICATED."""
        return self._checked(key, self._store.lookup(self._key_id(key)))

    @staticmethod
    def _key_id(key: str) -> str:
        key_id = key_id_of(key)
        if key_id is None:
            raise AuthenticationFailedError(
                ErrorReason.API_KEY_MALFORMED,
                "the API key is not of the form sk_<id>_<secret>; copy it again in full",
            )
        return key_id

    @staticmethod
    def _checked(key: str, record: ApiKeyRecord | None) -> ApiKeyRecord:
        # Compare even when the id is unknown so both failures take the same time.
        expected = record.key_hash if record is not None else bytes(32)
        if not hmac.compare_digest(expected, hash_key(key)) or record is None:
            raise AuthenticationFailedError(
                ErrorReason.API_KEY_INVALID,
                "the API key is not known to this gateway; check which server you target",
            )
        return _in_force(record)

    def _verify(self, authorization: str) -> ApiKeyRecord:
        return self.verify_key(self._bearer_key(authorization))

    @staticmethod
    def _bearer_key(authorization: str) -> str:
        if not authorization:
            raise AuthenticationFailedError(ErrorReason.API_KEY_MISSING, MISSING_KEY_MESSAGE)
        if not authorization.startswith(_BEARER):
            raise AuthenticationFailedError(
                ErrorReason.API_KEY_MALFORMED,
                "the authorization metadata must be `Bearer <key>`",
            )
        return authorization[len(_BEARER) :].strip()


def _in_force(record: ApiKeyRecord) -> ApiKeyRecord:
    """``record``, unless the key was revoked or has expired (UNAUTHENTICATED)."""
    if record.revoke_time is not None:
        raise AuthenticationFailedError(
            ErrorReason.API_KEY_REVOKED,
            f"API key {record.id} was revoked; ask an admin for a new key",
        )
    if record.is_expired(time.time()):
        raise AuthenticationFailedError(
            ErrorReason.API_KEY_EXPIRED,
            f"API key {record.id} has expired; ask an admin for a new key",
        )
    return record


def require_scope(record: ApiKeyRecord, scope: Scope, method: str) -> None:
    """Raises PERMISSION_DENIED SCOPE_MISSING unless the key allows ``scope``."""
    if not record.allows(scope):
        raise ServiceError(
            grpc.StatusCode.PERMISSION_DENIED,
            ErrorReason.SCOPE_MISSING,
            f"{method} needs an API key with the {scope} scope; key {record.id} has "
            f"{', '.join(sorted(record.scopes)) or 'none'}",
            metadata={"required_scope": str(scope)},
        )
