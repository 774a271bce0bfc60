"""Opaque page tokens: a kind, the key to continue after, and a digest of the query."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from sandbox_sdk.server.status import invalid_argument

# Tokens this module issues are well under this; longer ones are refused unread.
MAX_TOKEN_CHARS = 1024


def query_digest(*parts: object) -> str:
    """A short digest of the filters a token belongs to."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_token(kind: str, query: str, key: list[Any]) -> str:
    """A token continuing a ``kind`` listing with filters ``query`` after ``key``."""
    data = json.dumps({"k": kind, "q": query, "after": key}, separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def decode_token(token: str, kind: str, query: str) -> list[Any] | None:
    """The key in ``token``; None for an empty token; INVALID_ARGUMENT for a foreign one."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS:
        raise invalid_argument(
            [("page_token", "pass the next_page_token of the previous page unchanged")]
        )
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        valid = (
            isinstance(data, dict) and data.get("k") == kind and isinstance(data.get("after"), list)
        )
    except (ValueError, binascii.Error, UnicodeDecodeError):
        valid = False
    if not valid:
        raise invalid_argument(
            [("page_token", "pass the next_page_token of the previous page unchanged")]
        )
    if data.get("q") != query:
        raise invalid_argument(
            [("page_token", "this token belongs to a listing with other filters; start over")]
        )
    after: list[Any] = data["after"]
    return after


def page_size(requested: int, default: int, maximum: int) -> int:
    """The effective page size: ``default`` for 0, at most ``maximum``; negative is invalid."""
    if requested < 0:
        raise invalid_argument([("page_size", f"use 0 (for {default}) to {maximum}")])
    return min(requested or default, maximum)
