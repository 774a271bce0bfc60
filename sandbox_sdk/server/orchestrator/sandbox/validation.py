"""Checks every field of the environment requests and turns them into the layer's types.

Each function collects all violations of a request and raises one
INVALID_ARGUMENT naming every bad field path and what to do about it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

from google.protobuf import duration_pb2

from sandbox_sdk.api.v1 import common_pb2, environment_pb2, requests_pb2
from sandbox_sdk.server import ids
from sandbox_sdk.server.field_violations import FieldViolations
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Command,
    EnvironmentSpec,
    EnvironmentUpdate,
    FileWrite,
    Limits,
    ListQuery,
    NetworkPolicy,
    NewEnvironment,
)
from sandbox_sdk.server.orchestrator.sandbox.network import parse_cidrs
from sandbox_sdk.server.orchestrator.sandbox.settings import MiB, SandboxSettings
from sandbox_sdk.server.orchestrator.sandbox.workspace import WorkspacePathError, split_path
from sandbox_sdk.server.status import invalid_argument

MIN_CPU_CORES = 0.01
MIN_MEMORY_BYTES = 8 * MiB
MIN_DISK_BYTES = 1 * MiB
MIN_PIDS = 8
MAX_FILES = 1000
MAX_LABELS = 64
MAX_ENV_VARS = 256
MAX_ENV_VALUE_BYTES = 32 * 1024
MAX_EGRESS_CIDRS = 64
DEFAULT_LIST_PAGE = 50
DEFAULT_FILES_PAGE = 100
MAX_PAGE = 1000
MIN_USAGE_INTERVAL = 0.1
MAX_USAGE_INTERVAL = 3600.0
UPDATABLE_PATHS = ("labels", "ttl", "idle_timeout")

_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_Number = TypeVar("_Number", int, float)


def _show(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _seconds(duration: duration_pb2.Duration) -> float | None:
    """A Duration in seconds, or None if it is malformed (nanos out of range or sign)."""
    if abs(duration.nanos) >= 1_000_000_000 or duration.seconds * duration.nanos < 0:
        return None
    return duration.seconds + duration.nanos / 1e9


def _duration(
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


def _limits(
    violations: FieldViolations, limits: common_pb2.ResourceLimits, settings: SandboxSettings
) -> Limits:
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
        exec_timeout_seconds=_duration(
            violations,
            prefix + "exec_timeout",
            limits.exec_timeout,
            default=defaults.exec_timeout_seconds,
            maximum=maximums.exec_timeout_seconds,
        ),
    )


def _labels(
    violations: FieldViolations, field_path: str, labels: Mapping[str, str]
) -> dict[str, str]:
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


def _env_vars(
    violations: FieldViolations, field_path: str, env_vars: Mapping[str, str]
) -> dict[str, str]:
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


def _network(violations: FieldViolations, value: int) -> NetworkPolicy:
    policy = _NETWORK_POLICIES.get(int(value))
    if policy is None:
        violations.add(
            "spec.network_policy", "use NETWORK_POLICY_NONE, NETWORK_POLICY_EGRESS or _HOST"
        )
        return NetworkPolicy.NONE
    return policy


def _cidrs(
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


def _path(
    violations: FieldViolations, field_path: str, path: str, *, allow_root: bool
) -> tuple[str, ...]:
    try:
        return split_path(path, allow_root=allow_root)
    except WorkspacePathError as error:
        violations.add(field_path, f"'{path}' {error}")
        return ()


def _mode(violations: FieldViolations, field_path: str, mode: int) -> int:
    if mode & ~0o777:
        violations.add(field_path, "only permission bits (at most 0o777) are allowed")
        return 0o644
    return mode or 0o644


def _files(
    violations: FieldViolations, files: Sequence[environment_pb2.FileContent], limits: Limits
) -> tuple[FileWrite, ...]:
    if len(files) > MAX_FILES:
        violations.add("files", f"has {len(files)} files; at most {MAX_FILES} are allowed")
    writes = []
    for index, file in enumerate(files):
        _path(violations, f"files[{index}].path", file.path, allow_root=False)
        mode = _mode(violations, f"files[{index}].mode", file.mode)
        writes.append(FileWrite(file.path, file.content, mode))
    total = sum(len(file.content) for file in files)
    if total > limits.disk_bytes:
        violations.add(
            "files",
            f"hold {total} bytes, more than the disk quota of {limits.disk_bytes}; "
            "raise spec.limits.disk_bytes or send fewer bytes",
        )
    return tuple(writes)


def environment_id(value: str) -> str:
    """Checks the form of an environment id; the caller maps foreign owners to NOT_FOUND."""
    if not ids.is_valid(value, ids.ENVIRONMENT):
        raise invalid_argument(
            [
                (
                    "environment_id",
                    "must look like env-<orchestrator>-<16 hex digits>, "
                    "as returned by CreateEnvironment",
                )
            ]
        )
    return value


def new_environment(
    request: requests_pb2.CreateEnvironmentRequest, settings: SandboxSettings
) -> NewEnvironment:
    """A CreateEnvironment request with defaults filled in."""
    violations = FieldViolations()
    spec = request.spec
    limits = _limits(violations, spec.limits, settings)
    resolved = EnvironmentSpec(
        limits=limits,
        env_vars=_env_vars(violations, "spec.env_vars", spec.env_vars),
        labels=_labels(violations, "spec.labels", spec.labels),
        ttl_seconds=_duration(
            violations,
            "spec.ttl",
            spec.ttl,
            default=settings.default_ttl_seconds,
            maximum=settings.max_ttl_seconds,
        ),
        idle_timeout_seconds=_duration(
            violations,
            "spec.idle_timeout",
            spec.idle_timeout,
            default=settings.default_idle_timeout_seconds,
            maximum=settings.max_idle_timeout_seconds,
        ),
        network=_network(violations, spec.network_policy),
    )
    resolved = replace(
        resolved,
        egress_allow_cidrs=_cidrs(
            violations, "spec.egress_allow_cidrs", spec.egress_allow_cidrs, resolved.network
        ),
        egress_deny_cidrs=_cidrs(
            violations, "spec.egress_deny_cidrs", spec.egress_deny_cidrs, resolved.network
        ),
    )
    files = _files(violations, request.files, limits)
    if request.request_id and not _REQUEST_ID.match(request.request_id):
        violations.add(
            "request_id", "use a UUID (1-128 characters of letters, digits, '.', '_', ':', '-')"
        )
    violations.raise_if_any()
    return NewEnvironment(
        spec=resolved,
        files=files,
        request_id=request.request_id,
        queue_when_full=request.queue_when_full,
    )


def environment_update(
    request: requests_pb2.UpdateEnvironmentRequest, settings: SandboxSettings
) -> EnvironmentUpdate:
    """The changes an UpdateEnvironment request names in its update_mask."""
    violations = FieldViolations()
    paths = [path.removeprefix("spec.") for path in request.update_mask.paths]
    if not paths:
        violations.add("update_mask", f"name the fields to change: {', '.join(UPDATABLE_PATHS)}")
    for index, path in enumerate(paths):
        if path not in UPDATABLE_PATHS:
            violations.add(
                f"update_mask.paths[{index}]",
                f"'{path}' cannot be changed; use {', '.join(UPDATABLE_PATHS)}",
            )
    spec = request.spec
    update = EnvironmentUpdate(
        labels=_labels(violations, "spec.labels", spec.labels) if "labels" in paths else None,
        ttl_seconds=_duration(
            violations,
            "spec.ttl",
            spec.ttl,
            default=settings.default_ttl_seconds,
            maximum=settings.max_ttl_seconds,
        )
        if "ttl" in paths
        else None,
        idle_timeout_seconds=_duration(
            violations,
            "spec.idle_timeout",
            spec.idle_timeout,
            default=settings.default_idle_timeout_seconds,
            maximum=settings.max_idle_timeout_seconds,
        )
        if "idle_timeout" in paths
        else None,
    )
    violations.raise_if_any()
    return update


def list_query(request: requests_pb2.ListEnvironmentsRequest) -> ListQuery:
    """A ListEnvironments page request."""
    violations = FieldViolations()
    page_size = _page_size(violations, request.page_size, DEFAULT_LIST_PAGE)
    selector = _labels(violations, "label_selector", request.label_selector)
    violations.raise_if_any()
    return ListQuery(
        page_size=page_size,
        page_token=request.page_token,
        label_selector=selector,
        show_terminated=request.show_terminated,
    )


def _page_size(violations: FieldViolations, page_size: int, default: int) -> int:
    if page_size < 0:
        violations.add("page_size", f"must not be negative; 0 takes the default of {default}")
        return default
    return min(page_size or default, MAX_PAGE)


def _argv(violations: FieldViolations, argv: Sequence[str]) -> None:
    if not argv or not argv[0]:
        violations.add("argv", "name the program and its arguments, such as ['python3', 'main.py']")
    for index, argument in enumerate(argv):
        if "\x00" in argument:
            violations.add(f"argv[{index}]", "contains a NUL byte; remove it")


def command(request: requests_pb2.ExecCommandRequest, settings: SandboxSettings) -> Command:
    """An ExecCommand request; a zero timeout means the environment's exec_timeout (0 here)."""
    violations = FieldViolations()
    _argv(violations, request.argv)
    _path(violations, "cwd", request.cwd, allow_root=True)
    env_vars = _env_vars(violations, "env_vars", request.env_vars)
    timeout = _duration(
        violations,
        "timeout",
        request.timeout,
        default=0.0,
        maximum=settings.max_limits.exec_timeout_seconds,
    )
    violations.raise_if_any()
    return Command(
        argv=tuple(request.argv),
        cwd=request.cwd,
        env_vars=env_vars,
        stdin=request.stdin,
        timeout_seconds=timeout,
        output_cap_bytes=settings.output_cap_bytes,
    )


def internal_command(
    argv: Sequence[str],
    *,
    env_vars: Mapping[str, str],
    stdin: bytes,
    timeout_seconds: float,
    output_cap_bytes: int,
) -> Command:
    """A command from inside the orchestrator (``SandboxPort.run_command``), checked alike."""
    violations = FieldViolations()
    _argv(violations, argv)
    checked_env = _env_vars(violations, "env_vars", env_vars)
    violations.raise_if_any()
    return Command(
        argv=tuple(argv),
        env_vars=checked_env,
        stdin=stdin,
        timeout_seconds=max(0.0, timeout_seconds),
        output_cap_bytes=output_cap_bytes,
    )


def file_write(request: requests_pb2.WriteFileRequest) -> FileWrite:
    """The file of a WriteFile request."""
    violations = FieldViolations()
    if not request.HasField("file"):
        violations.add("file", "set file.path and file.content")
    _path(violations, "file.path", request.file.path, allow_root=False)
    mode = _mode(violations, "file.mode", request.file.mode)
    violations.raise_if_any()
    return FileWrite(request.file.path, request.file.content, mode)


def file_path(path: str) -> str:
    """The path of a ReadFile request."""
    violations = FieldViolations()
    _path(violations, "path", path, allow_root=False)
    violations.raise_if_any()
    return path


def directory_listing(request: requests_pb2.ListFilesRequest) -> tuple[str, int]:
    """The directory and page size of a ListFiles request."""
    violations = FieldViolations()
    _path(violations, "path", request.path, allow_root=True)
    page_size = _page_size(violations, request.page_size, DEFAULT_FILES_PAGE)
    violations.raise_if_any()
    return request.path, page_size


def usage_interval(request: requests_pb2.StreamEnvironmentUsageRequest) -> float:
    """The sampling interval of a StreamEnvironmentUsage request; zero means 1 second."""
    violations = FieldViolations()
    interval = _duration(
        violations,
        "interval",
        request.interval,
        default=1.0,
        minimum=MIN_USAGE_INTERVAL,
        maximum=MAX_USAGE_INTERVAL,
    )
    violations.raise_if_any()
    return interval
