"""Templates: root file systems environments start from, their builds and build events."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from sandbox_sdk.api.v1 import template_pb2
from sandbox_sdk.models._enums import enum_table
from sandbox_sdk.models.environment import ResourceLimits
from sandbox_sdk.utils.units import from_duration_pb, from_timestamp_pb


class TemplateState(enum.StrEnum):
    """Lifecycle of a template: BUILDING, then READY or FAILED."""

    UNSPECIFIED = "UNSPECIFIED"
    BUILDING = "BUILDING"
    READY = "READY"
    FAILED = "FAILED"

    @property
    def is_final(self) -> bool:
        """Whether the build has ended (READY or FAILED)."""
        return self in (TemplateState.READY, TemplateState.FAILED)


class TemplateSource(enum.StrEnum):
    """Where a template's root file system came from."""

    UNSPECIFIED = "UNSPECIFIED"
    SPEC = "SPEC"
    SNAPSHOT = "SNAPSHOT"
    PUBLIC = "PUBLIC"


_STATES = enum_table(template_pb2.TemplateState.items(), "TEMPLATE_STATE_", TemplateState)
_SOURCES = enum_table(template_pb2.TemplateSource.items(), "TEMPLATE_SOURCE_", TemplateSource)


def template_state(number: int) -> TemplateState:
    """The :class:`TemplateState` of a wire enum number."""
    return _STATES.get(number, TemplateState.UNSPECIFIED)


def _base_of(spec: template_pb2.TemplateSpec) -> str:
    """The base in a word: ``debian:bookworm/minbase``, ``oci-archive:<sha256>`` or ``""``."""
    kind = spec.WhichOneof("base")
    if kind == "debian":
        return f"debian:{spec.debian.suite}/{spec.debian.variant or 'minbase'}"
    if kind == "oci_archive":
        return (
            f"oci-archive:{spec.oci_archive.sha256}" if spec.oci_archive.sha256 else "oci-archive"
        )
    return ""


@dataclass(slots=True)
class TemplateInfo:
    """A snapshot of a template as the service last reported it.

    ``base`` is ``"debian:<suite>/<variant>"``, ``"oci-archive:<sha256>"``, or
    ``""`` for a snapshot (whose ``source_environment_id`` and
    ``parent_template_id`` say where it came from).
    """

    id: str
    state: TemplateState
    name: str = ""
    digest: str = ""
    source: TemplateSource = TemplateSource.UNSPECIFIED
    public: bool = False
    failure_message: str = ""
    base: str = ""
    apt_packages: list[str] = field(default_factory=list)
    pip_packages: list[str] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    env_vars: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    size_bytes: int = 0
    source_environment_id: str = ""
    parent_template_id: str = ""
    orchestrator_id: str = ""
    environments_using: int = 0
    create_time: datetime | None = None
    finish_time: datetime | None = None
    build_seconds: float = 0.0

    @property
    def is_ready(self) -> bool:
        """Whether environments can start from it now."""
        return self.state is TemplateState.READY

    @classmethod
    def from_proto(cls, message: template_pb2.Template) -> TemplateInfo:
        """Converts the wire form."""
        spec = message.spec
        return cls(
            id=message.id,
            state=template_state(message.state),
            name=message.display_name,
            digest=message.digest,
            source=_SOURCES.get(message.source, TemplateSource.UNSPECIFIED),
            public=message.public,
            failure_message=message.failure_message,
            base=_base_of(spec),
            apt_packages=list(spec.apt_packages),
            pip_packages=list(spec.pip_packages),
            commands=[list(command.argv) for command in spec.commands],
            env_vars=dict(spec.defaults.env_vars),
            workdir=spec.defaults.workdir,
            limits=ResourceLimits.from_proto(spec.defaults.limits),
            size_bytes=message.size_bytes,
            source_environment_id=message.source_environment_id,
            parent_template_id=message.parent_template_id,
            orchestrator_id=message.orchestrator_id,
            environments_using=message.environments_using,
            create_time=from_timestamp_pb(message.create_time),
            finish_time=from_timestamp_pb(message.finish_time),
            build_seconds=from_duration_pb(message.build_duration),
        )


@dataclass(slots=True, frozen=True)
class TemplateStateChange:
    """The template moved to ``state``; ``failure_message`` says why when FAILED."""

    state: TemplateState
    failure_message: str = ""


@dataclass(slots=True, frozen=True)
class TemplateBuildEvent:
    """One event of a build: a ``log`` line (``payload`` is a str) or a state change.

    ``sequence`` increases by one per event, from 1.
    """

    sequence: int
    template_id: str
    payload: str | TemplateStateChange | None
    time: datetime | None = None

    @classmethod
    def from_proto(cls, message: template_pb2.TemplateBuildEvent) -> TemplateBuildEvent:
        """Converts the wire form; a payload kind this SDK predates is ``None``."""
        kind = message.WhichOneof("payload")
        payload: str | TemplateStateChange | None = None
        if kind == "log":
            payload = message.log
        elif kind == "state_change":
            change = message.state_change
            payload = TemplateStateChange(template_state(change.state), change.failure_message)
        return cls(
            sequence=message.sequence,
            template_id=message.template_id,
            payload=payload,
            time=from_timestamp_pb(message.time),
        )
