"""Page tokens: opaque, signed cursors that continue one listing and no other.

A token is handed to a client and comes back as input, so it carries an HMAC
made with a key only this process knows: a forged or edited token fails the
check and is refused before anything in it is used. It names the kind of
listing it continues and a digest of the listing's *scope* (the tenant, the
filters, the directory: whatever the listing is bound to), so a token of one
listing cannot continue another. Tokens do not outlive the process (a
restart makes a new key), which suits page tokens: a listing is started again.

Every refusal is INVALID_ARGUMENT with a field violation on ``page_token``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from sandbox_sdk.server.status import ServiceError, invalid_argument

# Far above any token issued here (a gateway token holds one per orchestrator);
# longer input is refused unread.
MAX_TOKEN_CHARS = 16_384
_KEY = secrets.token_bytes(32)
_MAC_BYTES = 16
_FIELD = "page_token"
_NOT_OURS = (
    "is not a page token this server issued (or it was changed, or the server restarted); "
    "start the listing again without a token"
)

Position = TypeVar("Position")


def encode(kind: str, scope: object, position: object) -> str:
    """A token continuing the ``kind`` listing bound to ``scope`` after ``position``.

    ``scope`` and ``position`` must be JSON-serializable (``scope`` may hold any
    value whose ``str`` is stable, such as enum members).
    """
    body = json.dumps(
        {"k": kind, "s": _digest(scope), "p": position}, separators=(",", ":"), sort_keys=True
    ).encode()
    return f"{_b64(body)}.{_b64(_mac(body))}"


def decode(
    token: str, kind: str, scope: object, parse: Callable[[Any], Position]
) -> Position | None:
    """The position in ``token`` (None for an empty token), checked by ``parse``.

    Raises INVALID_ARGUMENT unless this process issued ``token`` for the ``kind``
    listing bound to ``scope``, and ``parse`` accepts its position (``parse``
    raises ValueError, TypeError, KeyError, IndexError or AttributeError to refuse it).
    """
    if not token:
        return None
    data = _verified(token)
    if data.get("k") != kind:
        raise _refused("belongs to another kind of listing; start again without it")
    if data.get("s") != _digest(scope):
        raise _refused(
            "belongs to another listing (other filters, another directory or another "
            "tenant); start again without it"
        )
    try:
        return parse(data.get("p"))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise _refused("is not a page token of this listing; start again without it") from None


def _verified(token: str) -> dict[str, Any]:
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise _refused(_NOT_OURS)
    body_text, mac_text = token.split(".")
    try:
        body, mac = _unb64(body_text), _unb64(mac_text)
    except (binascii.Error, ValueError):
        raise _refused(_NOT_OURS) from None
    if not hmac.compare_digest(mac, _mac(body)):
        raise _refused(_NOT_OURS)
    data = json.loads(body)
    if not isinstance(data, dict):
        raise _refused(_NOT_OURS)
    return data


def _refused(description: str) -> ServiceError:
    return invalid_argument([(_FIELD, description)])


def _digest(scope: object) -> str:
    canonical = json.dumps(scope, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _mac(body: bytes) -> bytes:
    return hmac.new(_KEY, body, hashlib.sha256).digest()[:_MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
