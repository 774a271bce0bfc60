"""The validated client settings object and its parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import grpc
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from sandbox_sdk.config.local_server import TCP_DEFAULT_TARGET, default_target
from sandbox_sdk.config.targets import (
    join_addresses,
    merge_targets_key,
    normalize_target,
    split_addresses,
)

DEFAULT_TARGET = TCP_DEFAULT_TARGET
DEFAULT_DATA_DIR = Path("~/.sandbox-sdk")


class TlsSettings(BaseModel):
    """TLS to the gateway; mutual TLS when ``client_cert`` and ``client_key`` are set.

    Setting any path turns TLS on. ``root_ca`` defaults to the system roots.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    root_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None

    @model_validator(mode="after")
    def _pair_and_enable(self) -> Self:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError(
                "client_cert and client_key go together: set both for mutual TLS, or neither"
            )
        if not self.enabled and (self.root_ca or self.client_cert):
            return self.model_copy(update={"enabled": True})
        return self


class RetrySettings(BaseModel):
    """Retry of idempotent calls and of creates carrying a request id (see ``RetryPolicy``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=5, ge=1)
    initial_backoff: float = Field(default=0.1, gt=0)
    max_backoff: float = Field(default=5.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1)
    deadline: float | None = Field(default=60.0, gt=0)
    retryable_codes: tuple[str, ...] = ("UNAVAILABLE",)

    @field_validator("retryable_codes")
    @classmethod
    def _known_codes(cls, codes: tuple[str, ...]) -> tuple[str, ...]:
        names = {code.name for code in grpc.StatusCode}
        unknown = [code for code in codes if code.upper() not in names]
        if unknown:
            raise ValueError(f"unknown gRPC status code(s) {unknown}; use names like UNAVAILABLE")
        return tuple(code.upper() for code in codes)


class MetricsSettings(BaseModel):
    """Client-side RPC metrics; both off by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prometheus: bool = False
    opentelemetry: bool = False


class ClientSettings(BaseModel):
    """Every client setting, validated. Build it with :meth:`load` to apply the precedence
    explicit argument > environment > YAML file > defaults (see ``sandbox_sdk.config``).

    Without a ``target``, the target is the local server's Unix socket
    ``<data_dir>/gateway.sock`` when it exists, else ``127.0.0.1:50051``.
    Several gateways: ``target`` (or ``targets``) as a list of ``host:port``,
    or one string of them separated by commas, or a ``dns:///name:port``
    target; calls are then spread round-robin over them (see
    :mod:`sandbox_sdk.config.targets`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = DEFAULT_TARGET
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    timeout: float = Field(default=30.0, gt=0)
    wait_timeout: float = Field(default=600.0, gt=0)
    data_dir: Path = Field(default=DEFAULT_DATA_DIR, validate_default=True)
    tls: TlsSettings = TlsSettings()
    retry: RetrySettings = RetrySettings()
    metrics: MetricsSettings = MetricsSettings()

    @model_validator(mode="before")
    @classmethod
    def _local_socket_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "targets" in data:
            data = merge_targets_key(data)
        if isinstance(data, dict) and "target" not in data:
            data_dir = data.get("data_dir") or DEFAULT_DATA_DIR
            if isinstance(data_dir, str | Path):
                return {**data, "target": default_target(Path(data_dir).expanduser())}
        return data

    @field_validator("target", mode="before")
    @classmethod
    def _joined_target(cls, target: Any) -> Any:
        if isinstance(target, list | tuple):
            return join_addresses(target)
        return target

    @field_validator("target")
    @classmethod
    def _non_empty_target(cls, target: str) -> str:
        if not target.strip():
            raise ValueError(
                "the gateway address is empty; use host:port (e.g. 127.0.0.1:50051) or unix:PATH"
            )
        return normalize_target(target)

    @property
    def addresses(self) -> tuple[str, ...]:
        """The gateway addresses of a list target; one item for any other target."""
        return split_addresses(self.target)

    @field_validator("data_dir", "api_key_file")
    @classmethod
    def _expand_user(cls, path: Path | None) -> Path | None:
        return path.expanduser() if path is not None else None

    @classmethod
    def load(cls, config_path: str | Path | None = None, **overrides: object) -> ClientSettings:
        """Settings from ``overrides`` > environment > YAML file > defaults."""
        from sandbox_sdk.config.loader import load_settings

        return load_settings(config_path=config_path, overrides=overrides)
