"""The Orchestrator's configuration, from YAML or code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sandbox_sdk.server.ids import ORCHESTRATOR_ID_PATTERN
from sandbox_sdk.server.orchestrator.experiments import ExperimentSettings
from sandbox_sdk.server.orchestrator.internal_auth import require_internal_authentication
from sandbox_sdk.server.orchestrator.sandbox import SandboxSettings
from sandbox_sdk.server.tls import TlsConfig


class RegistrySettings(BaseModel):
    """Where the orchestrator announces itself to the gateways, and how."""

    model_config = ConfigDict(extra="forbid")

    database_url: str = Field(
        description="The gateways' shared store (postgresql://...), holding the registry."
    )
    advertise_address: str | None = Field(
        default=None,
        description="host:port the gateways reach this orchestrator on; default: its listen"
        " address with the bound port.",
    )
    zone: str = Field(default="", description="Label: the zone this orchestrator runs in.")
    machine_class: str = Field(default="", description="Label: the kind of machine it is.")
    lease_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How long a registration lives unless renewed; renewed every third of it."
        " An orchestrator that dies is dropped by the gateways after at most this long.",
    )


class ArchiveSettings(BaseModel):
    """Where finished experiments are archived, so that they outlive this orchestrator."""

    model_config = ConfigDict(extra="forbid")

    database_url: str = Field(
        description="The gateways' shared store (postgresql://..., or sqlite:///path for one"
        " host) that finished experiments' results and events are shipped to; the gateways"
        " serve them from there once this orchestrator is gone."
    )


class PublicTemplate(BaseModel):
    """One template of the operator's public set: read-only, listed to every tenant."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[a-z][a-z0-9-]{0,62}$",
        description="What tenants pass as spec.template; lower-case letters, digits, dashes"
        " (never 'tpl-...', the shape of tenants' template ids).",
    )
    spec: dict[str, Any] = Field(
        description="A sandbox.v1.TemplateSpec in its JSON form, for example {'debian':"
        " {'suite': 'bookworm'}, 'aptPackages': ['python3-numpy']}."
    )

    @field_validator("name")
    @classmethod
    def _not_an_id(cls, value: str) -> str:
        if value.startswith("tpl-"):
            raise ValueError("'tpl-' starts the ids of tenants' templates")
        return value


class TemplateSettings(BaseModel):
    """Where templates live and what the operator provides."""

    model_config = ConfigDict(extra="forbid")

    cache_dir: Path | None = Field(
        default=None,
        description="The content-addressed store of built root file systems; default"
        " <data_dir>/templates. Several orchestrators of one host may share it.",
    )
    public: list[PublicTemplate] = Field(
        default_factory=list,
        description="Built in the background at start on every orchestrator; tenants name"
        " them in spec.template.",
    )
    snapshot_quota_bytes: int = Field(
        default=10 * 1024**3,
        ge=0,
        description="Disk one tenant's snapshots may take on this orchestrator together.",
    )


class OrchestratorConfig(BaseModel):
    """Everything an orchestrator process needs to start."""

    model_config = ConfigDict(extra="forbid")

    orchestrator_id: str = Field(
        default="o1", description="Prefix of every id this orchestrator assigns; [a-z0-9]{1,16}."
    )
    data_dir: Path = Field(description="SQLite database and environment workspaces live here.")
    listen: str = Field(default="127.0.0.1:50061", description="host:port to serve gRPC on.")
    internal_token: str | None = Field(
        default=None,
        description="Callers (the gateway) must send `authorization: Bearer <token>`; at least"
        " 32 characters, e.g. from `openssl rand -hex 32`.",
    )
    tls: TlsConfig | None = Field(
        default=None,
        description="TLS on the port; with client_ca_file, only callers with a certificate"
        " from that CA get through (mutual TLS), which authenticates the gateway.",
    )
    insecure_dev_loopback_only: bool = Field(
        default=False,
        description="Serve without internal authentication, as a development instance: every"
        " local process can then act as any tenant. Only with listen on 127.0.0.1 or [::1].",
    )
    metrics_port: int | None = Field(
        default=None, description="Serve Prometheus metrics on this port; 0 picks a free one."
    )
    registry: RegistrySettings | None = Field(
        default=None,
        description="Register with the gateways' registry (with a lease) instead of being"
        " listed in their configuration.",
    )
    archive: ArchiveSettings | None = Field(
        default=None,
        description="Ship every finished experiment (results and events) to the gateways'"
        " shared store, exactly once, so it stays readable after this orchestrator is gone.",
    )
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    experiments: ExperimentSettings = Field(default_factory=ExperimentSettings)
    templates: TemplateSettings = Field(default_factory=TemplateSettings)

    @field_validator("orchestrator_id")
    @classmethod
    def _id_is_short_and_plain(cls, value: str) -> str:
        if not ORCHESTRATOR_ID_PATTERN.match(value):
            raise ValueError("use 1 to 16 lower-case letters or digits, for example 'o1'")
        return value

    @model_validator(mode="after")
    def _authenticates_its_callers(self) -> OrchestratorConfig:
        require_internal_authentication(self)
        return self

    @property
    def database_path(self) -> Path:
        """The orchestrator's SQLite file."""
        return self.data_dir / "orchestrator.db"

    @property
    def workspace_root(self) -> Path:
        """Where environment workspaces are created."""
        return self.data_dir / "workspaces"

    @property
    def template_root(self) -> Path:
        """The template store's directory."""
        return self.templates.cache_dir or self.data_dir / "templates"
