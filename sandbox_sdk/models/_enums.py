"""Mapping protobuf enum numbers to the SDK's string enums."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TypeVar

E = TypeVar("E", bound=enum.StrEnum)


def enum_table(items: Iterable[tuple[str, int]], prefix: str, target: type[E]) -> dict[int, E]:
    """``{wire number: member}`` for a proto enum's ``items()``, names stripped of ``prefix``."""
    return {number: target(name.removeprefix(prefix)) for name, number in items}


def enum_numbers(table: dict[int, E]) -> dict[E, int]:
    """The inverse of :func:`enum_table`."""
    return {member: number for number, member in table.items()}
