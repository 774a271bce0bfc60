"""``--json``: any SDK value (dataclasses, enums, times, nested containers) as JSON on stdout."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any


def _scalar(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _scalar(value.value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str | int | bool) or value is None:
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)  # paths, and anything else with a useful text form


def jsonable(value: Any) -> Any:
    """``value`` made of JSON types only: dataclasses become objects, enums their values,
    times ISO 8601 strings, and NaN or infinite floats ``null`` (JSON has neither)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    return _scalar(value)


def print_json(value: Any, *, one_line: bool = False) -> None:
    """Writes ``value`` as JSON to stdout: indented, or on one line for JSON Lines."""
    text = json.dumps(jsonable(value), ensure_ascii=False, indent=None if one_line else 2)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
