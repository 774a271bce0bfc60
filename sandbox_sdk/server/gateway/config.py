"""The Gateway's configuration: where it listens, which orchestrators it fronts, limits."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sandbox_sdk.server.ids import ORCHESTRATOR_ID_PATTERN
from sandbox_sdk.server.tls import ClientTlsConfig, TlsConfig

DATA_DIR_ENV = "SANDBOX_DATA_DIR"


def default_data_dir() -> Path:
    """``$SANDBOX_DATA_DIR``, or ``~/.sandbox-sdk`` when it is not set."""
    return Path(os.environ.get(DATA_DIR_ENV) or "~/.sandbox-sdk").expanduser()


class OrchestratorEndpoint(BaseModel):
    """One orchestrator behind the gateway."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The orchestrator's id, the middle part of the ids it assigns.")
    address: str = Field(description="host:port of its OrchestratorService.")

    @field_validator("id")
    @classmethod
    def _id_is_short_and_plain(cls, value: str) -> str:
        if not ORCHESTRATOR_ID_PATTERN.match(value):
            raise ValueError("use 1 to 16 lower-case letters or digits, for example 'o1'")
        return value


class TenantLimits(BaseModel):
    """Quotas and rate limits of one tenant; ``None`` means unlimited."""

    model_config = ConfigDict(extra="forbid")

    max_environments: int | None = Field(
        default=48,
        ge=0,
        description=(
            "Live environments. The default is what one orchestrator admits for one tenant"
            " (75% of its 64), so the quota and the orchestrators agree."
        ),
    )
    max_concurrent_experiments: int | None = Field(
        default=50, ge=0, description="Experiments QUEUED or RUNNING at once."
    )
    requests_per_second: float | None = Field(
        default=500.0, gt=0, description="Sustained calls per second (token bucket refill)."
    )
    burst: int = Field(default=1000, ge=1, description="Calls allowed at once (bucket size).")


class TenantLimitOverrides(BaseModel):
    """Per-tenant changes to the default limits; unset fields keep the default."""

    model_config = ConfigDict(extra="forbid")

    max_environments: int | None = Field(default=None, ge=0)
    max_concurrent_experiments: int | None = Field(default=None, ge=0)
    requests_per_second: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)


class LimitsConfig(BaseModel):
    """Default limits and per-tenant overrides."""

    model_config = ConfigDict(extra="forbid")

    default: TenantLimits = Field(default_factory=TenantLimits)
    tenants: dict[str, TenantLimitOverrides] = Field(default_factory=dict)
    quota_retry_after_seconds: float = Field(
        default=5.0,
        gt=0,
        description="RetryInfo delay sent with QUOTA_EXCEEDED (spread up to 1.5x so that"
        " refused callers do not return together).",
    )

    def for_tenant(self, tenant: str) -> TenantLimits:
        """The limits in force for ``tenant``."""
        return self._resolved.get(tenant, self.default)

    @cached_property
    def _resolved(self) -> dict[str, TenantLimits]:
        return {
            tenant: self.default.model_copy(update=overrides.model_dump(exclude_unset=True))
            for tenant, overrides in self.tenants.items()
        }


class RetrySettings(BaseModel):
    """Retries of UNAVAILABLE calls toward an orchestrator, within the caller's deadline."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=3, ge=1)
    initial_backoff_seconds: float = Field(default=0.05, gt=0)
    max_backoff_seconds: float = Field(default=1.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1)


class GatewayConfig(BaseModel):
    """Everything a gateway process needs to start."""

    model_config = ConfigDict(extra="forbid")

    listen: str = Field(default="127.0.0.1:50051", description="host:port of the public API.")
    unix_socket: Path | None = Field(
        default=None,
        description="Also serve on this Unix socket (mode 0600) for tools on this machine; the"
        " SDK sends the local admin key only to <data_dir>/gateway.sock. Put it in a directory"
        " only the gateway's user can enter (mode 0700).",
    )
    orchestrators: list[OrchestratorEndpoint] = Field(
        default_factory=lambda: [OrchestratorEndpoint(id="o1", address="127.0.0.1:50061")],
        description="The static list of orchestrators; empty (with database_url) to follow"
        " the registry instead.",
    )
    registry: bool = Field(
        default=False,
        description="Follow the orchestrator registry in database_url (orchestrators register"
        " themselves with a lease) instead of the static orchestrators list. Also on when"
        " database_url is set and orchestrators is empty.",
    )
    registry_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the live registry is read."
    )
    internal_token: str | None = Field(
        default=None, description="Sent to orchestrators as `authorization: Bearer <token>`."
    )
    orchestrator_tls: ClientTlsConfig | None = Field(
        default=None,
        description="TLS toward the orchestrators; with cert_file and key_file, mutual TLS.",
    )
    db_path: Path = Field(
        default_factory=lambda: default_data_dir() / "gateway.db",
        description="SQLite file holding API key hashes (when database_url is unset).",
    )
    database_url: str | None = Field(
        default=None,
        description="PostgreSQL shared by all gateway replicas (postgresql://user@host/db):"
        " API keys, and quota reservations so a tenant's quota holds across replicas."
        " Unset: the SQLite file db_path, with quotas counted per gateway.",
    )
    admin_key_path: Path | None = Field(
        default=None,
        description="Where the bootstrap admin key is written; default admin.key beside db_path.",
    )
    tls: TlsConfig | None = None
    metrics_port: int | None = Field(
        default=None, ge=0, description="Serve Prometheus metrics here; 0 picks a free port."
    )
    metrics_host: str = "127.0.0.1"
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    key_cache_seconds: float = Field(
        default=10.0, ge=0, description="How long a looked-up API key is reused from memory."
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis shared by all gateway replicas (redis://host:port/db): one rate"
        " limit per tenant across replicas, and revoked keys refused by every replica within"
        " a second. Unset: per-gateway limits, and other gateways see a revocation within"
        " key_cache_seconds.",
    )
    capacity_cache_seconds: float = Field(
        default=1.0, ge=0, description="How long an orchestrator's GetCapacity answer is reused."
    )
    health_check_interval_seconds: float = Field(default=1.0, gt=0)
    shutdown_grace_seconds: float = Field(default=5.0, ge=0)

    @property
    def follows_registry(self) -> bool:
        """Whether the orchestrators come from the registry rather than the static list."""
        return self.database_url is not None and (self.registry or not self.orchestrators)

    @model_validator(mode="after")
    def _has_orchestrators(self) -> GatewayConfig:
        if self.registry and self.database_url is None:
            raise ValueError("registry: true needs database_url, where the registry lives")
        if not self.orchestrators and self.database_url is None:
            raise ValueError(
                "orchestrators: list at least one, or set database_url to use the registry"
            )
        return self

    @model_validator(mode="after")
    def _orchestrator_ids_are_unique(self) -> GatewayConfig:
        ids = [endpoint.id for endpoint in self.orchestrators]
        if len(set(ids)) != len(ids):
            raise ValueError(f"orchestrators: each id must appear once, got {ids}")
        return self

    @property
    def resolved_admin_key_path(self) -> Path:
        """Where the bootstrap admin key lives."""
        return self.admin_key_path or self.db_path.parent / "admin.key"
