"""Checks every field of the environment requests and turns them into the layer's types.

Each function collects all violations of a request and raises one
INVALID_ARGUMENT naming every bad field path and what to do about it; the
checks of the fields several requests share are :mod:`.request_fields`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

from sandbox_sdk.api.v1 import requests_pb2
from sandbox_sdk.models.environment import ISOLATION_RUNTIMES
from sandbox_sdk.server import ids
from sandbox_sdk.server.field_violations import FieldViolations
from sandbox_sdk.server.orchestrator.sandbox import request_fields as fields
from sandbox_sdk.server.orchestrator.sandbox.environment_record import (
    Command,
    EnvironmentSpec,
    EnvironmentUpdate,
    FileWrite,
    IsolationRuntime,
    ListQuery,
    NewEnvironment,
)
from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings
from sandbox_sdk.server.status import invalid_argument

DEFAULT_LIST_PAGE = 50
DEFAULT_FILES_PAGE = 100
MAX_PAGE = 1000
MIN_USAGE_INTERVAL = 0.1
MAX_USAGE_INTERVAL = 3600.0
UPDATABLE_PATHS = ("labels", "ttl", "idle_timeout")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


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
    limits = fields.checked_limits(violations, spec.limits, settings)
    resolved = EnvironmentSpec(
        limits=limits,
        env_vars=fields.checked_env_vars(violations, "spec.env_vars", spec.env_vars),
        labels=fields.checked_labels(violations, "spec.labels", spec.labels),
        ttl_seconds=fields.checked_duration(
            violations,
            "spec.ttl",
            spec.ttl,
            default=settings.default_ttl_seconds,
            maximum=settings.max_ttl_seconds,
        ),
        idle_timeout_seconds=fields.checked_duration(
            violations,
            "spec.idle_timeout",
            spec.idle_timeout,
            default=settings.default_idle_timeout_seconds,
            maximum=settings.max_idle_timeout_seconds,
        ),
        network=fields.checked_network(violations, spec.network_policy),
        runtime=_checked_runtime(violations, spec.runtime),
    )
    resolved = replace(
        resolved,
        egress_allow_cidrs=fields.checked_cidrs(
            violations, "spec.egress_allow_cidrs", spec.egress_allow_cidrs, resolved.network
        ),
        egress_deny_cidrs=fields.checked_cidrs(
            violations, "spec.egress_deny_cidrs", spec.egress_deny_cidrs, resolved.network
        ),
    )
    files = fields.checked_files(violations, request.files, limits)
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


def _checked_runtime(violations: FieldViolations, value: int) -> IsolationRuntime:
    """The runtime asked for, UNSPECIFIED included (the operator's policy resolves it at
    admission); a number this server does not know is a violation."""
    runtime = ISOLATION_RUNTIMES.get(int(value))
    if runtime is None:
        violations.add(
            "spec.runtime",
            f"unknown runtime {int(value)}: use ISOLATION_RUNTIME_BUBBLEWRAP, "
            "ISOLATION_RUNTIME_GVISOR, or leave it UNSPECIFIED for the operator's default",
        )
        return IsolationRuntime.UNSPECIFIED
    return runtime


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
        labels=fields.checked_labels(violations, "spec.labels", spec.labels)
        if "labels" in paths
        else None,
        ttl_seconds=fields.checked_duration(
            violations,
            "spec.ttl",
            spec.ttl,
            default=settings.default_ttl_seconds,
            maximum=settings.max_ttl_seconds,
        )
        if "ttl" in paths
        else None,
        idle_timeout_seconds=fields.checked_duration(
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
    selector = fields.checked_labels(violations, "label_selector", request.label_selector)
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
    fields.checked_path(violations, "cwd", request.cwd, allow_root=True)
    env_vars = fields.checked_env_vars(violations, "env_vars", request.env_vars)
    timeout = fields.checked_duration(
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
    checked_env = fields.checked_env_vars(violations, "env_vars", env_vars)
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
    fields.checked_path(violations, "file.path", request.file.path, allow_root=False)
    mode = fields.checked_mode(violations, "file.mode", request.file.mode)
    violations.raise_if_any()
    return FileWrite(request.file.path, request.file.content, mode)


def file_path(path: str) -> str:
    """The path of a ReadFile request."""
    violations = FieldViolations()
    fields.checked_path(violations, "path", path, allow_root=False)
    violations.raise_if_any()
    return path


def directory_listing(request: requests_pb2.ListFilesRequest) -> tuple[str, int]:
    """The directory and page size of a ListFiles request."""
    violations = FieldViolations()
    fields.checked_path(violations, "path", request.path, allow_root=True)
    page_size = _page_size(violations, request.page_size, DEFAULT_FILES_PAGE)
    violations.raise_if_any()
    return request.path, page_size


def usage_interval(request: requests_pb2.StreamEnvironmentUsageRequest) -> float:
    """The sampling interval of a StreamEnvironmentUsage request; zero means 1 second."""
    violations = FieldViolations()
    interval = fields.checked_duration(
        violations,
        "interval",
        request.interval,
        default=1.0,
        minimum=MIN_USAGE_INTERVAL,
        maximum=MAX_USAGE_INTERVAL,
    )
    violations.raise_if_any()
    return interval
