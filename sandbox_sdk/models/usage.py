"""Resource usage of an environment or of one command."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sandbox_sdk.api.v1 import common_pb2
from sandbox_sdk.models.environment import ResourceLimits
from sandbox_sdk.utils.units import from_timestamp_pb


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    """One usage sample."""

    cpu_seconds: float = 0.0
    cpu_percent: float = 0.0
    memory_bytes: int = 0
    memory_peak_bytes: int = 0
    pids: int = 0
    disk_bytes: int = 0
    sample_time: datetime | None = None

    @classmethod
    def from_proto(cls, message: common_pb2.ResourceUsage) -> ResourceUsage:
        """Converts the wire form."""
        return cls(
            cpu_seconds=message.cpu_seconds,
            cpu_percent=message.cpu_percent,
            memory_bytes=message.memory_bytes,
            memory_peak_bytes=message.memory_peak_bytes,
            pids=message.pids,
            disk_bytes=message.disk_bytes,
            sample_time=from_timestamp_pb(message.sample_time),
        )


@dataclass(frozen=True, slots=True)
class UsageReport:
    """The latest usage sample of an environment next to its limits."""

    usage: ResourceUsage = field(default_factory=ResourceUsage)
    limits: ResourceLimits = field(default_factory=ResourceLimits)
