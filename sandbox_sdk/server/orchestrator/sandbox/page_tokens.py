"""Opaque page tokens, bound to the query they continue.

A token carries a cursor and a fingerprint of the query's filters, so a
token from one listing cannot silently continue a different one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping


class PageTokenError(ValueError):
    """A page token that is malformed or belongs to another query."""


def fingerprint(kind: str, filters: Mapping[str, object]) -> str:
    """A short digest of a listing's kind and filters."""
    canonical = json.dumps({"kind": kind, "filters": filters}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode(position: int | str, query_fingerprint: str) -> str:
    """The token that resumes after ``position``."""
    raw = json.dumps({"p": position, "q": query_fingerprint}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, query_fingerprint: str) -> int | str:
    """The position inside ``token``; raises PageTokenError if it does not fit the query."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError) as error:
        raise PageTokenError("is not a page token this server issued") from error
    if not isinstance(data, dict) or not isinstance(data.get("p"), int | str):
        raise PageTokenError("is not a page token this server issued")
    if data.get("q") != query_fingerprint:
        raise PageTokenError("belongs to a listing with other filters; start again without it")
    position: int | str = data["p"]
    return position
