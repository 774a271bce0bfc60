"""Checks of the fields environment requests share: durations, limits, labels,
environment variables, network policy, paths, modes and files.

Each check records what is wrong in a :class:`FieldViolations` and returns a
usable value (the default, when the field is wrong), so that a request's
validator (:mod:`.validation`) reports every bad field at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TypeVar

from google.protobuf import duration_pb2

from sandbox_sdk.api.v1 import common_pb2, environment_pb2
from sandbox_sdk.server.field_violations import FieldViolations
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    FileWrite,
    Limits,
    NetworkPolicy,
)
from sandbox_sdk.server.orchestrator.sandbox.network import parse_cidrs
from sandbox_sdk.server.orchestrator.sandbox.settings import MiB, SandboxSettings
from sandbox_sdk.server.orchestrator.sandbox.workspace import WorkspacePathError, split_path

MIN_CPU_CORES = 0.01
MIN_MEMORY_BYTES = 8 * MiB
MIN_DISK_BYTES = 1 * MiB
MIN_PIDS = 8
MAX_FILES = 1000
MAX_LABELS = 64
MAX_ENV_VARS = 256
MAX_ENV_VALUE_BYTES = 32 * 1024
MAX_EGRESS_CIDRS = 64

_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")

_Number = TypeVar("_Number", int, float)


def _show(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _seconds(duration: duration_pb2.Duration) -> float | None:
    """A Duration in seconds, or None if it is malformed (nanos out of range or sign)."""
    if abs(duration.nanos) >= 1_000_000_000 or duration.seconds * duration.nanos < 0:
        return None
    return duration.seconds + duration.nanos / 1e9


def checked_duration(
    violations: FieldViolations,
    field_path: str,
    duration: duration_pb2.Duration,
    *,
    default: float,
    maximum: float,
    minimum: float = 0.0,
) -> float:
    """A non-negative duration; zero takes ``default``."""
    seconds = _seconds(duration)
    if seconds is None:
        violations.add(field_path, "is not a valid duration; nanos must be below 1e9, same sign")
        return default
    if seconds < 0:
        violations.add(field_path, f"must not be negative; 0 takes the default of {default:g}s")
        return default
    if seconds == 0:
        return default
    if seconds < minimum:
        violations.add(field_path, f"must be at least {minimum:g}s")
    if seconds > maximum:
        violations.add(field_path, f"must be at most {maximum:g}s on this orchestrator")
    return seconds


def _bounded(
    violations: FieldViolations,
    field_path: str,
    value: _Number,
    *,
    default: _Number,
    minimum: _Number,
    maximum: _Number,
) -> _Number:
    """A non-negative limit; zero takes ``default``."""
    if isinstance(value, float) and not math.isfinite(value):
        violations.add(field_path, "must be a finite number")
        return default
    if value < 0:
        violations.add(field_path, f"must not be negative; 0 takes the default of {_show(default)}")
        return default
    if value == 0:
        return default
    if value < minimum:
        violations.add(field_path, f"must be at least {_show(minimum)}")
    elif value > maximum:
        violations.add(field_path, f"must be at most {_show(maximum)} on this orchestrator")
    return value


def checked_limits(
    violations: FieldViolations, limits: common_pb2.ResourceLimits, settings: SandboxSettings
) -> Limits:
    """The spec's resource limits; zero takes the default, each bounded by the maximum."""
    defaults, maximums = settings.default_limits, settings.max_limits
    prefix = "spec.limits."
    return Limits(
        cpu_cores=_bounded(
            violations,
            prefix + "cpu_cores",
            limits.cpu_cores,
            default=defaults.cpu_cores,
            minimum=MIN_CPU_CORES,
            maximum=maximums.cpu_cores,
        ),
        memory_bytes=_bounded(
            violations,
            prefix + "memory_bytes",
            limits.memory_bytes,
            default=defaults.memory_bytes,
            minimum=MIN_MEMORY_BYTES,
            maximum=maximums.memory_bytes,
        ),
        disk_bytes=_bounded(
            violations,
            prefix + "disk_bytes",
            limits.disk_bytes,
            default=defaults.disk_bytes,
            minimum=MIN_DISK_BYTES,
            maximum=maximums.disk_bytes,
        ),
        max_pids=_bounded(
            violations,
            prefix + "max_pids",
            limits.max_pids,
            default=defaults.max_pids,
            minimum=MIN_PIDS,
            maximum=maximums.max_pids,
        ),
        exec_timeout_seconds=checked_duration(
            violations,
            prefix + "exec_timeout",
            limits.exec_timeout,
            default=defaults.exec_timeout_seconds,
            maximum=maximums.exec_timeout_seconds,
        ),
    )


def checked_labels(
    violations: FieldViolations, field_path: str, labels: Mapping[str, str]
) -> dict[str, str]:
    """Labels with valid keys and values, at most MAX_LABELS of them."""
    if len(labels) > MAX_LABELS:
        violations.add(field_path, f"has {len(labels)} labels; at most {MAX_LABELS} are allowed")
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            violations.add(
                f"{field_path}[{key!r}]",
                "keys are 1-63 characters of letters, digits, '.', '_', '/', '-', "
                "starting with a letter or digit",
            )
        if len(value) > 255 or "\x00" in value:
            violations.add(f"{field_path}[{key!r}]", "values are at most 255 characters, no NUL")
    return dict(labels)


def checked_env_vars(
    violations: FieldViolations, field_path: str, env_vars: Mapping[str, str]
) -> dict[str, str]:
    """Environment variables with valid names and bounded values."""
    if len(env_vars) > MAX_ENV_VARS:
        violations.add(field_path, f"has {len(env_vars)} variables; at most {MAX_ENV_VARS}")
    for name, value in env_vars.items():
        if not _ENV_NAME.match(name):
            violations.add(
                f"{field_path}[{name!r}]",
                "names are letters, digits and '_', not starting with a digit",
            )
        if "\x00" in value or len(value.encode()) > MAX_ENV_VALUE_BYTES:
            violations.add(
                f"{field_path}[{name!r}]", f"values are at most {MAX_ENV_VALUE_BYTES} bytes, no NUL"
            )
    return dict(env_vars)


_NETWORK_POLICIES: dict[int, NetworkPolicy] = {
    common_pb2.NETWORK_POLICY_UNSPECIFIED: NetworkPolicy.NONE,
    common_pb2.NETWORK_POLICY_NONE: NetworkPolicy.NONE,
    common_pb2.NETWORK_POLICY_HOST: NetworkPolicy.HOST,
    common_pb2.NETWORK_POLICY_EGRESS: NetworkPolicy.EGRESS,
}


def checked_network(violations: FieldViolations, value: int) -> NetworkPolicy:
    """The network policy; an unknown value is a violation (and NONE)."""
    policy = _NETWORK_POLICIES.get(int(value))
    if policy is None:
        violations.add(
            "spec.network_policy", "use NETWORK_POLICY_NONE, NETWORK_POLICY_EGRESS or _HOST"
        )
        return NetworkPolicy.NONE
    return policy


def checked_cidrs(
    violations: FieldViolations, field_path: str, values: Sequence[str], network: NetworkPolicy
) -> tuple[str, ...]:
    """CIDR blocks in canonical form (the only form that reaches the firewall)."""
    if not values:
        return ()
    if network is not NetworkPolicy.EGRESS:
        violations.add(field_path, "only applies with NETWORK_POLICY_EGRESS")
        return ()
    if len(values) > MAX_EGRESS_CIDRS:
        violations.add(field_path, f"has {len(values)} blocks; at most {MAX_EGRESS_CIDRS}")
        return ()
    try:
        return tuple(str(network) for network in parse_cidrs(values))
    except ValueError as error:
        violations.add(field_path, f"{error}; write blocks like 203.0.113.0/24 or 2001:db8::/32")
        return ()


def checked_path(
    violations: FieldViolations, field_path: str, path: str, *, allow_root: bool
) -> tuple[str, ...]:
    """A workspace path split into parts; empty when it is invalid."""
    try:
        return split_path(path, allow_root=allow_root)
    except WorkspacePathError as error:
        violations.add(field_path, f"'{path}' {error}")
        return ()


def checked_mode(violations: FieldViolations, field_path: str, mode: int) -> int:
    """File permission bits; zero takes 0o644."""
    if mode & ~0o777:
        violations.add(field_path, "only permission bits (at most 0o777) are allowed")
        return 0o644
    return mode or 0o644


def checked_files(
    violations: FieldViolations, files: Sequence[environment_pb2.FileContent], limits: Limits
) -> tuple[FileWrite, ...]:
    """The files of a create, within MAX_FILES and the disk quota."""
    if len(files) > MAX_FILES:
        violations.add("files", f"has {len(files)} files; at most {MAX_FILES} are allowed")
    writes = []
    for index, file in enumerate(files):
        checked_path(violations, f"files[{index}].path", file.path, allow_root=False)
        mode = checked_mode(violations, f"files[{index}].mode", file.mode)
        writes.append(FileWrite(file.path, file.content, mode))
    total = sum(len(file.content) for file in files)
    if total > limits.disk_bytes:
        violations.add(
            "files",
            f"hold {total} bytes, more than the disk quota of {limits.disk_bytes}; "
            "raise spec.limits.disk_bytes or send fewer bytes",
        )
    return tuple(writes)
