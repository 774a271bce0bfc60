"""The provider's configuration: which gateway, and what each sample's environments look like.

A task names it as ``sandbox="sandbox-sdk"`` (the SDK's own defaults and ``SANDBOX_*``
variables), ``sandbox=("sandbox-sdk", "sandbox.yaml")`` (a YAML file) or
``sandbox=SandboxEnvironmentSpec("sandbox-sdk", SandboxSdkConfig(...))``. The YAML file
holds the SDK's client settings under ``client:`` (read by the SDK itself, relative paths
relative to the file) and this provider's keys beside it::

    client:
      target: 127.0.0.1:50051
      api_key_file: sandbox.key
    environments:          # one environment per name and sample; the first is the default
      default:
        memory: 512Mi
        template: python
        network: none
        runtime: gvisor    # or bubblewrap; left out: the operator's default

The configuration is written into inspect's eval logs, so it never holds an API key:
give one with ``api_key_file`` or ``SANDBOX_API_KEY``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sandbox_sdk.config.settings import ClientSettings
from sandbox_sdk.errors import ConfigError
from sandbox_sdk.models.environment import isolation_runtime

DEFAULT_ENVIRONMENT = "default"
_PROVIDER_KEYS = ("environments",)
_CLIENT_KEY = "client"


class EnvironmentOptions(BaseModel):
    """The options of ``create_environment`` for one of a sample's environments.

    Left out, a limit takes the server's default. ``template`` is a template's id or a public
    template's name (``client.list_templates()``); ``network`` is ``none``, ``egress`` or
    ``host``; ``runtime`` is ``bubblewrap`` or ``gvisor`` (left out: the operator's default,
    under the same policy as any other create).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: float | None = Field(default=None, gt=0)
    memory: int | str | None = None
    disk: int | str | None = None
    pids: int | None = Field(default=None, gt=0)
    exec_timeout: float | str | None = None
    ttl: float | str | None = None
    idle_timeout: float | str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    network: str | None = None
    egress_allow: list[str] | None = None
    egress_deny: list[str] | None = None
    template: str | None = None
    runtime: str | None = None
    queue: bool = Field(
        default=True,
        description="Wait in the orchestrator's queue when it is full instead of failing.",
    )
    create_timeout: float = Field(default=600.0, gt=0)

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, value: str | None) -> str | None:
        isolation_runtime(value)  # ValueError naming the choices
        return value


class SandboxSdkConfig(BaseModel):
    """Where the gateway is and which environments each sample gets.

    ``config_path`` is the SDK's client configuration file (its ``client:`` section or its
    top level); ``target`` and ``api_key_file`` override it. ``environments`` maps each
    sandbox name a sample uses to its options; the first is the default sandbox.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str | None = None
    api_key_file: str | None = None
    config_path: str | None = None
    environments: dict[str, EnvironmentOptions] = Field(
        default_factory=lambda: {DEFAULT_ENVIRONMENT: EnvironmentOptions()}
    )

    @field_validator("environments")
    @classmethod
    def _at_least_one(cls, value: dict[str, EnvironmentOptions]) -> dict[str, EnvironmentOptions]:
        if not value:
            raise ValueError("name at least one environment, such as 'default: {}'")
        return value

    def client_settings(self) -> ClientSettings:
        """The SDK's settings: arguments here > ``SANDBOX_*`` variables > the file > defaults.

        Reads files, so call it off the event loop.
        """
        overrides: dict[str, object] = {}
        if self.target is not None:
            overrides["target"] = self.target
        if self.api_key_file is not None:
            overrides["api_key_file"] = self.api_key_file
        return ClientSettings.load(self.config_path, **overrides)

    def shell_arguments(self) -> list[str]:
        """The global options of the ``sandbox-sdk`` command that reach the same gateway."""
        arguments: list[str] = []
        if self.config_path is not None:
            arguments += ["--config", self.config_path]
        if self.target is not None:
            arguments += ["--target", self.target]
        return arguments


def load_config_file(path: str | Path) -> SandboxSdkConfig:
    """The configuration in the YAML file at ``path`` (blocking: call it off the event loop)."""
    file = Path(path).expanduser().resolve()
    try:
        document = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(
            f"the sandbox-sdk config file {file} does not exist; pass the path of a YAML file "
            "as sandbox=('sandbox-sdk', 'sandbox.yaml')"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read the sandbox-sdk config file {file}: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{file} must hold a YAML mapping with 'client:' and 'environments:'")
    unknown = sorted(str(key) for key in document if key not in (*_PROVIDER_KEYS, _CLIENT_KEY))
    if unknown:
        raise ConfigError(
            f"{file} has unknown keys {unknown}; the SDK's settings go under 'client:', the "
            "environments under 'environments:'"
        )
    provider = {key: document[key] for key in _PROVIDER_KEYS if key in document}
    if _CLIENT_KEY in document:
        provider["config_path"] = str(file)
    return _validated(provider, str(file))


def config_from_dict(values: dict[str, Any]) -> SandboxSdkConfig:
    """The configuration from a dict (as inspect stores it in an eval log)."""
    return _validated(values, "the sandbox-sdk config")


def _validated(values: dict[str, Any], origin: str) -> SandboxSdkConfig:
    try:
        return SandboxSdkConfig.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        raise ConfigError(f"{origin} is not valid: {problems}") from None
