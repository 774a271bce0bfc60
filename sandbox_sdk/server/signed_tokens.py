"""Opaque, tamper-proof page tokens: a JSON payload and an HMAC of it.

A token is handed to a client and comes back as input, so it is signed with
a key only this process knows: a forged or edited token fails the check and
is refused before anything in it is used. Tokens do not outlive the process
(a restart makes a new key), which suits page tokens: a listing is started
again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from typing import Any

MAX_TOKEN_CHARS = 2048
_KEY = secrets.token_bytes(32)
_MAC_BYTES = 16


class TokenError(ValueError):
    """A token this process did not issue for this kind of listing, or one that was edited."""


def sign(kind: str, payload: dict[str, Any]) -> str:
    """A token carrying ``payload`` for listings of ``kind``."""
    body = json.dumps({"k": kind, **payload}, separators=(",", ":"), sort_keys=True).encode()
    return f"{_b64(body)}.{_b64(_mac(body))}"


def verify(token: str, kind: str) -> dict[str, Any]:
    """The payload of a token :func:`sign` made for ``kind``; TokenError otherwise."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise TokenError("is not a page token this server issued")
    body_text, mac_text = token.split(".")
    try:
        body, mac = _unb64(body_text), _unb64(mac_text)
    except (binascii.Error, ValueError) as error:
        raise TokenError("is not a page token this server issued") from error
    if not hmac.compare_digest(mac, _mac(body)):
        raise TokenError(
            "is not a page token this server issued (or it was changed, or the server"
            " restarted); start the listing again without a token"
        )
    data = json.loads(body)
    if not isinstance(data, dict) or data.pop("k", None) != kind:
        raise TokenError("belongs to another kind of listing; start again without it")
    return data


def _mac(body: bytes) -> bytes:
    return hmac.new(_KEY, body, hashlib.sha256).digest()[:_MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
