"""Environments: their limits, lifecycle and the snapshot the service returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from sandbox_sdk.api.v1 import common_pb2, environment_pb2
from sandbox_sdk.models._enums import enum_numbers, enum_table
from sandbox_sdk.utils.units import from_duration_pb, from_timestamp_pb


class EnvironmentState(enum.StrEnum):
    """Lifecycle of an environment."""

    UNSPECIFIED = "UNSPECIFIED"
    CREATING = "CREATING"
    RUNNING = "RUNNING"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"
    QUEUED = "QUEUED"


class TerminationReason(enum.StrEnum):
    """Why an environment ended; ``UNSPECIFIED`` while it runs."""

    UNSPECIFIED = "UNSPECIFIED"
    USER_DELETED = "USER_DELETED"
    TTL_EXPIRED = "TTL_EXPIRED"
    IDLE_TIMEOUT = "IDLE_TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    CPU_LIMIT = "CPU_LIMIT"
    ORCHESTRATOR_RESTARTED = "ORCHESTRATOR_RESTARTED"
    ORCHESTRATOR_LOST = "ORCHESTRATOR_LOST"
    SETUP_FAILED = "SETUP_FAILED"
    SANDBOX_VIOLATION = "SANDBOX_VIOLATION"


class NetworkPolicy(enum.StrEnum):
    """Network access of commands in an environment."""

    UNSPECIFIED = "UNSPECIFIED"
    NONE = "NONE"
    HOST = "HOST"
    EGRESS = "EGRESS"


class IsolationRuntime(enum.StrEnum):
    """What isolates an environment's commands from the host.

    ``BUBBLEWRAP``: Linux namespaces, seccomp, cgroups and rlimits on the host
    kernel. ``GVISOR``: the same commands under gVisor's user-space kernel
    (``runsc``), so a host kernel bug is not an escape. ``UNSPECIFIED``: the
    operator's default.
    """

    UNSPECIFIED = "UNSPECIFIED"
    BUBBLEWRAP = "BUBBLEWRAP"
    GVISOR = "GVISOR"


_STATES = enum_table(
    environment_pb2.EnvironmentState.items(), "ENVIRONMENT_STATE_", EnvironmentState
)
_REASONS = enum_table(
    environment_pb2.TerminationReason.items(), "TERMINATION_REASON_", TerminationReason
)
_NETWORKS = enum_table(common_pb2.NetworkPolicy.items(), "NETWORK_POLICY_", NetworkPolicy)
NETWORK_POLICY_NUMBERS = enum_numbers(_NETWORKS)
ISOLATION_RUNTIMES = enum_table(
    environment_pb2.IsolationRuntime.items(), "ISOLATION_RUNTIME_", IsolationRuntime
)
"""``{wire number: runtime}``; a number missing from it is one this SDK does not know."""
ISOLATION_RUNTIME_NUMBERS = enum_numbers(ISOLATION_RUNTIMES)


def isolation_runtime(value: IsolationRuntime | str | None) -> IsolationRuntime:
    """``runtime=`` as an :class:`IsolationRuntime`: ``None`` is ``UNSPECIFIED`` (the
    operator's default); names are case-insensitive (``"gvisor"``, ``"BUBBLEWRAP"``).

    Raises:
        ValueError: ``value`` names no runtime; the message lists the choices.
    """
    if value is None:
        return IsolationRuntime.UNSPECIFIED
    try:
        return IsolationRuntime(str(value).upper())
    except ValueError:
        raise ValueError(
            f"runtime must be 'bubblewrap' or 'gvisor' (or None for the operator's default), "
            f"not {value!r}"
        ) from None


@dataclass(slots=True)
class ResourceLimits:
    """Limits of an environment; zero means the orchestrator default."""

    cpu_cores: float = 0.0
    memory_bytes: int = 0
    disk_bytes: int = 0
    max_pids: int = 0
    exec_timeout_seconds: float = 0.0

    @classmethod
    def from_proto(cls, message: common_pb2.ResourceLimits) -> ResourceLimits:
        """Converts the wire form."""
        return cls(
            cpu_cores=message.cpu_cores,
            memory_bytes=message.memory_bytes,
            disk_bytes=message.disk_bytes,
            max_pids=message.max_pids,
            exec_timeout_seconds=from_duration_pb(message.exec_timeout),
        )


@dataclass(slots=True)
class EnvironmentInfo:
    """A snapshot of an environment as the service last reported it.

    ``template_id`` is the template it started from (a public one's name), or ``""`` when
    it runs on the host's read-only system directories. ``runtime`` is what isolates it, as
    the server resolved it (``UNSPECIFIED`` only from a server that predates runtimes).
    """

    id: str
    state: EnvironmentState
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    env_vars: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    ttl_seconds: float = 0.0
    idle_timeout_seconds: float = 0.0
    network: NetworkPolicy = NetworkPolicy.UNSPECIFIED
    termination_reason: TerminationReason = TerminationReason.UNSPECIFIED
    termination_message: str = ""
    isolation: str = ""
    orchestrator_id: str = ""
    create_time: datetime | None = None
    expire_time: datetime | None = None
    last_activity_time: datetime | None = None
    terminate_time: datetime | None = None
    egress_allow: list[str] = field(default_factory=list)
    egress_deny: list[str] = field(default_factory=list)
    queue_position: int = 0
    template_id: str = ""
    runtime: IsolationRuntime = IsolationRuntime.UNSPECIFIED

    @property
    def is_running(self) -> bool:
        """Whether commands and experiments can run in it now."""
        return self.state is EnvironmentState.RUNNING

    @classmethod
    def from_proto(cls, message: environment_pb2.Environment) -> EnvironmentInfo:
        """Converts the wire form."""
        spec = message.spec
        return cls(
            id=message.id,
            state=_STATES.get(message.state, EnvironmentState.UNSPECIFIED),
            limits=ResourceLimits.from_proto(spec.limits),
            env_vars=dict(spec.env_vars),
            labels=dict(spec.labels),
            ttl_seconds=from_duration_pb(spec.ttl),
            idle_timeout_seconds=from_duration_pb(spec.idle_timeout),
            network=_NETWORKS.get(spec.network_policy, NetworkPolicy.UNSPECIFIED),
            termination_reason=_REASONS.get(
                message.termination_reason, TerminationReason.UNSPECIFIED
            ),
            termination_message=message.termination_message,
            isolation=message.isolation,
            orchestrator_id=message.orchestrator_id,
            create_time=from_timestamp_pb(message.create_time),
            expire_time=from_timestamp_pb(message.expire_time),
            last_activity_time=from_timestamp_pb(message.last_activity_time),
            terminate_time=from_timestamp_pb(message.terminate_time),
            egress_allow=list(spec.egress_allow_cidrs),
            egress_deny=list(spec.egress_deny_cidrs),
            queue_position=message.queue_position,
            template_id=message.template_id,
            runtime=ISOLATION_RUNTIMES.get(spec.runtime, IsolationRuntime.UNSPECIFIED),
        )
