"""Resource ids that name the orchestrator owning the resource.

An id looks like ``env-o1-3f2a9c0d1b7e4a6f``: kind, orchestrator id, random
hex. The gateway routes every call about a resource to the orchestrator
named in its id, with no lookup table to keep in sync.
"""

from __future__ import annotations

import re
import secrets

ENVIRONMENT = "env"
EXPERIMENT = "exp"
TEMPLATE = "tpl"
ORCHESTRATOR_ID_PATTERN = re.compile(r"^[a-z0-9]{1,16}$")
_ID_PATTERN = re.compile(r"(env|exp|tpl)-([a-z0-9]{1,16})-([0-9a-f]{16})")
# The longest well-formed id; anything longer is refused before any matching.
MAX_ID_CHARS = 3 + 1 + 16 + 1 + 16


def new_id(kind: str, orchestrator_id: str) -> str:
    """A fresh id of ``kind`` (``env``, ``exp`` or ``tpl``) owned by ``orchestrator_id``."""
    return f"{kind}-{orchestrator_id}-{secrets.token_hex(8)}"


def is_valid(resource_id: str, kind: str) -> bool:
    """Whether ``resource_id`` is well formed and of ``kind``."""
    match = _match(resource_id)
    return match is not None and match.group(1) == kind


def owner_of(resource_id: str, kind: str | None = None) -> str | None:
    """The orchestrator id inside a resource id, or ``None`` if it is malformed (or, with
    ``kind``, of another kind)."""
    match = _match(resource_id)
    if match is None or (kind is not None and match.group(1) != kind):
        return None
    return match.group(2)


def _match(resource_id: str) -> re.Match[str] | None:
    if len(resource_id) > MAX_ID_CHARS:
        return None
    return _ID_PATTERN.fullmatch(resource_id)
