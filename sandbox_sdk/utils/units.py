"""Human-friendly sizes and durations, and their protobuf wire forms.

Sizes accept bytes as an ``int`` or strings such as ``"512Mi"``, ``"1G"``,
``"64MB"``; binary suffixes (Ki, Mi, Gi, Ti) are powers of 1024, decimal
ones (K, M, G, T, with an optional B) powers of 1000. Durations accept
seconds as a number, a :class:`datetime.timedelta`, or strings such as
``"90s"``, ``"10m"``, ``"1h30m"``, ``"250ms"``.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

Size = int | str
DurationLike = float | int | timedelta | str

_SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "KI": 1024,
    "MI": 1024**2,
    "GI": 1024**3,
    "TI": 1024**4,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(value: Size) -> int:
    """Bytes from an ``int`` or a string like ``"512Mi"``; raises ``ValueError`` if malformed."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 536870912 or '512Mi', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return value
    match = _SIZE_PATTERN.match(value)
    if match is None:
        raise ValueError(
            f"expected a size such as '512Mi', '1Gi', '100MB' or a number of bytes, got {value!r}"
        )
    number, suffix = match.groups()
    unit = (suffix or "").upper()
    unit = "" if unit == "B" else unit.removesuffix("B")
    return int(float(number) * _SIZE_FACTORS[unit])


def parse_duration(value: DurationLike) -> float:
    """Seconds from a number, a ``timedelta`` or a string like ``"1h30m"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30, '90s' or '10m', got {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            seconds = _parse_duration_text(text, value)
    if seconds < 0 or math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"a duration must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def _parse_duration_text(text: str, original: str) -> float:
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(
            f"expected a duration such as 30, '90s', '10m', '1h30m' or '250ms', got {original!r}"
        )
    return sum(float(number) * _DURATION_FACTORS[unit] for number, unit in parts)


def format_size(num_bytes: float) -> str:
    """``1536`` -> ``"1.5Ki"``: a compact binary size for tables."""
    value = float(num_bytes)
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if abs(value) < 1024 or unit == "Ti":
            return f"{value:.0f}{unit}" if unit == "" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}Ti"  # pragma: no cover - the loop always returns


def to_duration_pb(seconds: float) -> duration_pb2.Duration:
    """A ``google.protobuf.Duration`` of ``seconds``."""
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def to_timestamp_pb(unix_seconds: float) -> timestamp_pb2.Timestamp:
    """A ``google.protobuf.Timestamp`` at ``unix_seconds`` since the epoch."""
    message = timestamp_pb2.Timestamp()
    message.FromNanoseconds(round(unix_seconds * 1e9))
    return message


def from_duration_pb(message: duration_pb2.Duration) -> float:
    """Seconds in a ``google.protobuf.Duration``."""
    return message.seconds + message.nanos / 1e9


def from_timestamp_pb(message: timestamp_pb2.Timestamp) -> datetime | None:
    """A timezone-aware UTC datetime, or ``None`` for an unset timestamp."""
    if message.seconds == 0 and message.nanos == 0:
        return None
    return datetime.fromtimestamp(message.seconds + message.nanos / 1e9, tz=UTC)
