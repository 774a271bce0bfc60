"""Hypothesis strategies for any protobuf request: random field values, and corrupt bytes.

Messages are built by walking their descriptors, so every request message of
both services is covered without a hand-written strategy each. Values mix
the ordinary (short text, small numbers), the extreme (numbers at their
limits, NaN, strings of thousands of characters, maps of a thousand
entries) and the plausible (ids, paths and model names the server knows),
so requests get past the first check as well as fail it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

MAX_DEPTH = 3
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def huge_text() -> st.SearchStrategy[str]:
    """Strings of 4,000 to 20,000 characters (ids, paths and labels far past any limit)."""
    return st.builds(
        lambda unit, count: unit * count,
        st.sampled_from(["a", "é", "/", "a/", "x" * 7, "\u2603", "\x00"]),
        st.integers(4_000, 20_000),
    )


def strings(known: Sequence[str]) -> st.SearchStrategy[str]:
    """Ordinary, known-to-the-server and enormous strings."""
    return st.one_of(
        st.text(max_size=24),
        st.sampled_from(list(known)) if known else st.just(""),
        huge_text(),
    )


def _scalar(field: FieldDescriptor, known: Sequence[str]) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return strings(known)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.binary(min_size=4096, max_size=70_000))
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 40)
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        width = 32 if kind == FieldDescriptor.TYPE_FLOAT else 64
        return st.floats(width=width, allow_nan=True, allow_infinity=True)
    low, high = _INT_RANGES[kind]
    return st.one_of(st.integers(max(low, -3), min(high, 100)), st.integers(low, high))


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


@st.composite
def messages(
    draw: st.DrawFn, descriptor: Descriptor, known: Sequence[str] = (), depth: int = 0
) -> Message:
    """A message of ``descriptor`` with a random subset of its fields set."""
    message = GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if draw(st.integers(0, 2)) == 0:
            continue
        _fill(draw, message, field, known, depth)
    return message


def _fill(
    draw: st.DrawFn, message: Message, field: FieldDescriptor, known: Sequence[str], depth: int
) -> None:
    target = getattr(message, field.name)
    if _is_map(field):
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        count = draw(st.one_of(st.integers(0, 3), st.sampled_from([70, 1_100])))
        for index in range(count):
            key = draw(_scalar(key_field, known)) if index < 3 else f"k{index}"
            if value_field.message_type is not None:
                if depth < MAX_DEPTH:
                    target[key].CopyFrom(draw(messages(value_field.message_type, known, depth + 1)))
            else:
                target[key] = draw(_scalar(value_field, known))
        return
    if field.is_repeated:
        count = draw(st.one_of(st.integers(0, 3), st.just(300)))
        for _ in range(count):
            if field.message_type is not None:
                if depth >= MAX_DEPTH:
                    return
                target.add().CopyFrom(draw(messages(field.message_type, known, depth + 1)))
            else:
                target.append(draw(_scalar(field, known)))
        return
    if field.message_type is not None:
        if depth < MAX_DEPTH:
            target.CopyFrom(draw(messages(field.message_type, known, depth + 1)))
        return
    setattr(message, field.name, draw(_scalar(field, known)))


@st.composite
def corrupt_bytes(draw: st.DrawFn, descriptor: Descriptor, known: Sequence[str] = ()) -> bytes:
    """Random bytes, or a valid message's bytes truncated or with bytes flipped."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = bytearray(draw(messages(descriptor, known)).SerializeToString())
    if not data:
        return bytes(draw(st.binary(min_size=1, max_size=40)))
    if draw(st.booleans()):
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(data) - 1))
        data[index] = draw(st.integers(0, 255))
    return bytes(data)
