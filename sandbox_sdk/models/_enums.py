"""Mapping protobuf enum numbers to the SDK's string enums."""

from __future__ import annotations

import enum
from typing import Protocol, TypeVar

E = TypeVar("E", bound=enum.StrEnum)


class _EnumValue(Protocol):
    name: str
    number: int


class _EnumDescriptor(Protocol):
    @property
    def values(self) -> list[_EnumValue]: ...


def enum_table(descriptor: _EnumDescriptor, prefix: str, target: type[E]) -> dict[int, E]:
    """``{wire number: member}`` for a proto enum whose names start with ``prefix``."""
    return {value.number: target(value.name.removeprefix(prefix)) for value in descriptor.values}


def enum_numbers(table: dict[int, E]) -> dict[E, int]:
    """The inverse of :func:`enum_table`."""
    return {member: number for number, member in table.items()}
