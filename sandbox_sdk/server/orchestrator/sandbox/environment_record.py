"""The sandbox layer's own types: environments, commands, files and usage.

Protobuf stays at the wire (``convert.py``); everything below the handlers
works with these dataclasses. Enum values are the proto enum names without
their prefix, so conversion is by name; the states, termination reasons, network
policies, isolation runtimes and exit reasons are the SDK's own (``sandbox_sdk.models``), as they
mean the same on both sides of the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from sandbox_sdk.models.environment import (
    EnvironmentState,
    IsolationRuntime,
    NetworkPolicy,
    TerminationReason,
)
from sandbox_sdk.models.execution import ExitReason

__all__ = [
    "Capacity",
    "Command",
    "Environment",
    "EnvironmentSpec",
    "EnvironmentState",
    "EnvironmentUpdate",
    "ExecEvent",
    "ExecExited",
    "ExecOutput",
    "ExecStarted",
    "ExitReason",
    "FileEntry",
    "FileWrite",
    "IsolationRuntime",
    "Limits",
    "ListQuery",
    "NetworkPolicy",
    "NewEnvironment",
    "TerminationReason",
    "Usage",
]


@dataclass(frozen=True)
class Limits:
    """Resource limits of one environment, every field resolved (no zeros)."""

    cpu_cores: float
    memory_bytes: int
    disk_bytes: int
    max_pids: int
    exec_timeout_seconds: float


@dataclass(frozen=True)
class EnvironmentSpec:
    """An environment's accepted spec with the orchestrator's defaults filled in."""

    limits: Limits
    env_vars: Mapping[str, str]
    labels: Mapping[str, str]
    ttl_seconds: float
    idle_timeout_seconds: float
    network: NetworkPolicy
    egress_allow_cidrs: tuple[str, ...] = ()
    egress_deny_cidrs: tuple[str, ...] = ()
    template: str | None = None
    """The digest of the template whose root file system it starts from; None: the host's."""
    template_id: str | None = None
    """The id of that template (a public one's name), as the API names it."""
    runtime: IsolationRuntime = IsolationRuntime.BUBBLEWRAP
    """What isolates its commands: once admitted, the runtime the operator's policy
    resolved the request to (see :mod:`.runtime_policy`), never UNSPECIFIED. A validated
    request not yet admitted holds what was asked for, UNSPECIFIED included."""


@dataclass(frozen=True)
class FileWrite:
    """A file to write into a workspace."""

    path: str
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class NewEnvironment:
    """A validated CreateEnvironment request."""

    spec: EnvironmentSpec
    files: tuple[FileWrite, ...] = ()
    request_id: str = ""
    queue_when_full: bool = False


@dataclass(frozen=True)
class Environment:
    """An environment as stored; times are Unix seconds."""

    id: str
    tenant: str
    spec: EnvironmentSpec
    state: EnvironmentState
    termination_reason: TerminationReason
    termination_message: str
    isolation: str
    orchestrator_id: str
    create_time: float
    expire_time: float
    last_activity_time: float
    terminate_time: float | None
    request_id: str = ""
    queue_position: int = 0

    @property
    def running(self) -> bool:
        """Whether commands and file calls are accepted."""
        return self.state is EnvironmentState.RUNNING


@dataclass(frozen=True)
class EnvironmentUpdate:
    """The fields an UpdateEnvironment call changes; ``None`` leaves one as it is."""

    labels: Mapping[str, str] | None = None
    ttl_seconds: float | None = None
    idle_timeout_seconds: float | None = None


@dataclass(frozen=True)
class ListQuery:
    """One page request of ListEnvironments."""

    page_size: int = 50
    page_token: str = ""
    label_selector: Mapping[str, str] = field(default_factory=dict)
    show_terminated: bool = False


@dataclass(frozen=True)
class Command:
    """A validated command; a zero timeout means the environment's exec_timeout."""

    argv: tuple[str, ...]
    cwd: str = ""
    env_vars: Mapping[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    timeout_seconds: float = 0.0
    output_cap_bytes: int = 64 << 20


@dataclass(frozen=True)
class ExecStarted:
    """The command's process started; ``pid`` is as the orchestrator sees it."""

    pid: int


@dataclass(frozen=True)
class ExecOutput:
    """Bytes the command wrote to one of its output streams."""

    stream: Literal["stdout", "stderr"]
    data: bytes


@dataclass(frozen=True)
class ExecExited:
    """How the command ended, and what its own process tree used."""

    exit_code: int
    signal: int
    reason: ExitReason
    cpu_seconds: float
    memory_peak_bytes: int
    duration_seconds: float
    stdout_truncated: bool
    stderr_truncated: bool


ExecEvent = ExecStarted | ExecOutput | ExecExited


@dataclass(frozen=True)
class FileEntry:
    """Metadata of a workspace file or directory; ``path`` is workspace-relative."""

    path: str
    size_bytes: int
    is_dir: bool
    mode: int
    modify_time: float
    is_symlink: bool = False


@dataclass(frozen=True)
class Usage:
    """An environment's resource use at ``sample_time`` (Unix seconds)."""

    cpu_seconds: float
    cpu_percent: float
    memory_bytes: int
    memory_peak_bytes: int
    pids: int
    disk_bytes: int
    sample_time: float


@dataclass(frozen=True)
class Capacity:
    """What the orchestrator has promised and may still promise."""

    orchestrator_id: str
    environments_running: int
    environments_max: int
    cpu_cores_allocated: float
    cpu_cores_total: float
    memory_bytes_allocated: int
    memory_bytes_total: int
    isolation: str
