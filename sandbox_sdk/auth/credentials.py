"""Bearer credentials: API keys, pluggable token providers and the cached call metadata."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import grpc

from sandbox_sdk.errors import ConfigError, SandboxError

AUTHORIZATION_KEY = "authorization"
Metadata = tuple[tuple[str, str], ...]


def mask_secret(secret: str) -> str:
    """A printable stand-in for a secret: its first 4 characters at most, never the rest."""
    if len(secret) < 12:
        return "****"
    return f"{secret[:4]}…({len(secret)} chars)"


@dataclass(frozen=True)
class Token:
    """A bearer token and, if it expires, when (seconds since the epoch)."""

    value: str = field(repr=False)
    expires_at: float | None = None

    def __repr__(self) -> str:
        return f"Token(value={mask_secret(self.value)!r}, expires_at={self.expires_at!r})"


@runtime_checkable
class TokenProvider(Protocol):
    """Supplies bearer tokens; called again shortly before a token expires, and once
    after the server answers UNAUTHENTICATED. It may block (the async client runs it
    in a worker thread)."""

    def get_token(self) -> Token:
        """A fresh, valid token."""
        ...


class ApiKey:
    """A static API key; it never expires on the client side."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str) -> None:
        secret = secret.strip()
        if not secret or any(c.isspace() for c in secret):
            raise ConfigError(
                "the API key is empty or contains whitespace; pass the secret printed by "
                "`sandbox-sdk keys create` exactly"
            )
        self._secret = secret

    def get_token(self) -> Token:
        """The key as a token without expiry."""
        return Token(self._secret)

    def __repr__(self) -> str:
        return f"ApiKey({mask_secret(self._secret)!r})"


class BearerAuth:
    """The ``authorization`` metadata for every call, refreshed before the token expires.

    The metadata tuple is built once per token, so a call costs one comparison.
    ``refresh_margin`` seconds before ``expires_at`` the provider is asked again.
    With no provider (``None``) calls carry no credentials at all.
    """

    def __init__(
        self,
        provider: TokenProvider | None,
        *,
        refresh_margin: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._provider = provider
        self._margin = refresh_margin
        self._clock = clock
        self._lock = threading.Lock()
        self._metadata: Metadata = ()
        self._refresh_at = -math.inf if provider is not None else math.inf
        self.refreshable = provider is not None and not isinstance(provider, ApiKey)

    def metadata(self) -> Metadata:
        """The call metadata with a valid token, fetching a new one when due."""
        if self._refresh_at == math.inf or self._clock() < self._refresh_at:
            return self._metadata
        with self._lock:
            if self._provider is not None and self._clock() >= self._refresh_at:
                self._install(self._provider.get_token())
        return self._metadata

    async def metadata_async(self) -> Metadata:
        """Like :meth:`metadata`, running a blocking provider in a worker thread."""
        if (
            self._provider is None
            or self._refresh_at == math.inf
            or self._clock() < self._refresh_at
        ):
            return self._metadata
        token = await asyncio.to_thread(self._provider.get_token)
        with self._lock:
            self._install(token)
        return self._metadata

    def invalidate(self) -> None:
        """Forces a new token on the next call (after the server rejected this one)."""
        if self._provider is None:
            return
        with self._lock:
            self._refresh_at = -math.inf

    def _install(self, token: Token) -> None:
        self._metadata = ((AUTHORIZATION_KEY, f"Bearer {token.value}"),)
        if token.expires_at is None:
            self._refresh_at = math.inf
        else:
            self._refresh_at = token.expires_at - self._margin

    def __repr__(self) -> str:
        return f"BearerAuth(provider={self._provider!r})"


class RefreshOnce:
    """One call's allowance of a single credential refresh after UNAUTHENTICATED.

    Calling it with a failed call's error says whether to retry at once with a
    fresh token; it says so at most once per call, and only for refreshable
    credentials (a static API key cannot get better by asking again).
    """

    __slots__ = ("_auth", "_used")

    def __init__(self, auth: BearerAuth) -> None:
        self._auth = auth
        self._used = False

    def __call__(self, error: SandboxError) -> bool:
        if (
            self._used
            or not self._auth.refreshable
            or error.code != grpc.StatusCode.UNAUTHENTICATED
        ):
            return False
        self._used = True
        self._auth.invalidate()
        return True
