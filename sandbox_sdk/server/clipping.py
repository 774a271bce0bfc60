"""Bounds on what an error status may carry, so it always fits in a gRPC trailer.

A status travels in trailers: ``grpc-message`` (percent-encoded, up to three
bytes per byte) and ``grpc-status-details-bin`` (the serialized
``google.rpc.Status``, base64: four bytes per three). Clients refuse
trailers past 8 KiB by default, and an overflowing trailer reaches them as
INTERNAL instead of the real error. Error messages and details echo what
the caller sent (an id, a path, a label), so every status is clipped here:
the message to :data:`MAX_MESSAGE_BYTES`, each detail string to a few
hundred bytes, violation lists to :data:`MAX_VIOLATIONS`, and the packed
details to :data:`MAX_DETAILS_BYTES`. With those, a whole trailer stays under
about 6 KiB whatever the request held.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from google.protobuf import any_pb2

MAX_MESSAGE_BYTES = 512
MAX_FIELD_BYTES = 96
MAX_DESCRIPTION_BYTES = 192
MAX_VIOLATIONS = 8
MAX_METADATA_ENTRIES = 8
MAX_METADATA_KEY_BYTES = 64
MAX_METADATA_VALUE_BYTES = 128
MAX_DETAILS_BYTES = 3000
MAX_REQUEST_ID_CHARS = 128
ELLIPSIS = "…"
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:/+=-]{{1,{MAX_REQUEST_ID_CHARS}}}")


def clip(text: str, max_bytes: int = MAX_MESSAGE_BYTES) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, ending in an ellipsis when cut."""
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= max_bytes:
        return text
    room = max(0, max_bytes - len(ELLIPSIS.encode()))
    return encoded[:room].decode("utf-8", errors="ignore") + ELLIPSIS


def echo(value: str, max_chars: int = 64) -> str:
    """A caller-supplied value quoted for an error message, shortened when long."""
    if len(value) <= max_chars:
        return repr(value)
    return f"{value[:max_chars]!r}{ELLIPSIS} ({len(value)} characters)"


def clip_violations(violations: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """At most :data:`MAX_VIOLATIONS` (field, description) pairs, each clipped.

    When there are more, the last kept pair says how many were left out.
    """
    kept = [
        (clip(field, MAX_FIELD_BYTES), clip(description, MAX_DESCRIPTION_BYTES))
        for field, description in violations[:MAX_VIOLATIONS]
    ]
    hidden = len(violations) - MAX_VIOLATIONS
    if hidden > 0:
        kept[-1] = (
            "request",
            f"{hidden + 1} more problems are not listed; fix the ones shown and try again",
        )
    return kept


def clip_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """At most :data:`MAX_METADATA_ENTRIES` entries, keys and values clipped."""
    items = list(metadata.items())[:MAX_METADATA_ENTRIES]
    return {
        clip(key, MAX_METADATA_KEY_BYTES): clip(value, MAX_METADATA_VALUE_BYTES)
        for key, value in items
    }


def fit_details(packed: Sequence[any_pb2.Any]) -> list[any_pb2.Any]:
    """The packed details that fit :data:`MAX_DETAILS_BYTES`, in their order.

    The first detail (ErrorInfo, which carries the reason) is always kept;
    later ones are kept while they fit.
    """
    kept: list[any_pb2.Any] = []
    used = 0
    for index, detail in enumerate(packed):
        size = detail.ByteSize()
        if index == 0 or used + size <= MAX_DETAILS_BYTES:
            kept.append(detail)
            used += size
    return kept


def valid_request_id(value: str) -> bool:
    """Whether a caller's request id is short and printable enough to echo back."""
    return _REQUEST_ID.fullmatch(value) is not None
