"""Reading one string field out of a serialized protobuf message without parsing it all.

The gateway forwards request bytes unchanged and only needs the resource id
(or request id) to route them; scanning the top-level fields is much cheaper
than deserializing, especially for requests that carry file contents.
"""

from __future__ import annotations

from collections.abc import Iterator

_VARINT = 0
_FIXED64 = 1
_LENGTH_DELIMITED = 2
_FIXED32 = 5


class MalformedMessageError(ValueError):
    """The bytes are not a valid serialized protobuf message."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedMessageError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Each top-level field as (number, wire type, varint value or raw bytes)."""
    pos = 0
    end = len(data)
    while pos < end:
        tag, pos = _varint(data, pos)
        field, wire_type = tag >> 3, tag & 7
        value: int | bytes
        if wire_type == _VARINT:
            value, pos = _varint(data, pos)
        elif wire_type == _FIXED64:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire_type == _FIXED32:
            value, pos = data[pos : pos + 4], pos + 4
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        else:
            raise MalformedMessageError(f"unsupported wire type {wire_type}")
        if pos > end:
            raise MalformedMessageError("truncated field")
        yield field, wire_type, value


def string_field(data: bytes, number: int) -> str:
    """The value of top-level string field ``number`` (the last one wins), or ``""``."""
    sole = _sole_short_field(data, number)
    if sole is not None:
        return _text(sole, number)
    value = ""
    for field, wire_type, raw in _fields(data):
        if field == number and wire_type == _LENGTH_DELIMITED and isinstance(raw, bytes):
            value = _text(raw, number)
    return value


def _sole_short_field(data: bytes, number: int) -> bytes | None:
    """The value when ``data`` is exactly one length-delimited field ``number`` whose tag
    and length take a byte each (a call naming one resource id, such as a Get), else
    ``None``: such a message needs no scan."""
    sole = (
        len(data) >= 2
        and number < 16
        and data[0] == (number << 3 | _LENGTH_DELIMITED)
        and data[1] == len(data) - 2
        and data[1] < 0x80
    )
    return data[2:] if sole else None


def _text(raw: bytes, number: int) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as error:
        raise MalformedMessageError(f"field {number} is not UTF-8") from error


def message_field(data: bytes, number: int) -> bytes:
    """The bytes of top-level message field ``number``; repeated occurrences merge, as
    protobuf merges them, by concatenation. ``b""`` when absent."""
    parts = [
        raw
        for field, wire_type, raw in _fields(data)
        if field == number and wire_type == _LENGTH_DELIMITED and isinstance(raw, bytes)
    ]
    return b"".join(parts)


def bool_field(data: bytes, number: int) -> bool:
    """The value of top-level bool field ``number`` (the last one wins), or False."""
    value = False
    for field, wire_type, raw in _fields(data):
        if field == number and wire_type == _VARINT and isinstance(raw, int):
            value = raw != 0
    return value
