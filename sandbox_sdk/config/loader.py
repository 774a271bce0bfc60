"""Merging explicit arguments, environment variables, the YAML file and defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sandbox_sdk.config.settings import ClientSettings
from sandbox_sdk.config.targets import merge_targets_key
from sandbox_sdk.errors import ConfigError

CONFIG_ENV = "SANDBOX_CONFIG"

# Environment variable -> dotted settings key.
ENV_KEYS: dict[str, str] = {
    "SANDBOX_TARGET": "target",
    "SANDBOX_API_KEY": "api_key",
    "SANDBOX_API_KEY_FILE": "api_key_file",
    "SANDBOX_TIMEOUT": "timeout",
    "SANDBOX_WAIT_TIMEOUT": "wait_timeout",
    "SANDBOX_DATA_DIR": "data_dir",
    "SANDBOX_TLS": "tls.enabled",
    "SANDBOX_TLS_ROOT_CA": "tls.root_ca",
    "SANDBOX_TLS_CLIENT_CERT": "tls.client_cert",
    "SANDBOX_TLS_CLIENT_KEY": "tls.client_key",
    "SANDBOX_TLS_SERVER_NAME": "tls.server_name",
    "SANDBOX_RETRY_MAX_ATTEMPTS": "retry.max_attempts",
    "SANDBOX_RETRY_INITIAL_BACKOFF": "retry.initial_backoff",
    "SANDBOX_RETRY_MAX_BACKOFF": "retry.max_backoff",
    "SANDBOX_RETRY_DEADLINE": "retry.deadline",
    "SANDBOX_METRICS_PROMETHEUS": "metrics.prometheus",
    "SANDBOX_METRICS_OPENTELEMETRY": "metrics.opentelemetry",
}
_PATH_KEYS = frozenset(
    {"api_key_file", "data_dir", "tls.root_ca", "tls.client_cert", "tls.client_key"}
)
# A YAML file shared with the services keeps the client's settings under this key.
CLIENT_SECTION = "client"


def load_settings(
    *,
    config_path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ClientSettings:
    """Builds :class:`ClientSettings` from ``overrides`` > ``environ`` > YAML file > defaults.

    ``overrides`` uses the settings' field names (``tls`` and ``retry`` may be
    mappings or settings objects); ``None`` values are ignored. The YAML file is
    ``config_path``, else ``$SANDBOX_CONFIG``, else none.
    """
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path_text = config_path if config_path is not None else env.get(CONFIG_ENV) or None
    if path_text is not None:
        path = Path(path_text).expanduser()
        _merge(merged, sources, _read_yaml(path), f"config file {path}")
    for name, key in ENV_KEYS.items():
        if env.get(name, "") != "":
            _merge(merged, sources, {key: env[name]}, f"environment variable {name}")
    _merge(merged, sources, _override_layer(overrides or {}), "argument")
    try:
        return ClientSettings.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(_describe(error, sources)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist; create it (for example with the line "
            "'target: 127.0.0.1:50051') or drop config_path / SANDBOX_CONFIG"
        )
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, like 'timeout: 30'")
    section = document.get(CLIENT_SECTION, document)
    if not isinstance(section, dict):
        raise ConfigError(f"'{CLIENT_SECTION}' in config file {path} must be a mapping")
    flat = _flatten(section)
    if "targets" in flat:
        try:
            flat = merge_targets_key(flat)
        except ValueError as error:
            raise ConfigError(f"config file {path}: {error}") from None
    return _resolve_relative_paths(flat, path.parent)


def _override_layer(overrides: Mapping[str, object]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        plain = _plain(key, value)
        if isinstance(plain, Mapping):
            flat.update({f"{key}.{sub}": v for sub, v in _flatten(dict(plain)).items()})
        else:
            flat[key] = plain
    return flat


def _plain(key: str, value: object) -> object:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)
    if key == "tls" and isinstance(value, bool):
        return {"enabled": value}
    return value


def _flatten(mapping: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted in ("tls", "retry", "metrics"):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _resolve_relative_paths(flat: dict[str, Any], base: Path) -> dict[str, Any]:
    for key in _PATH_KEYS & flat.keys():
        value = flat[key]
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            flat[key] = str(base / value)
    return flat


def _merge(
    merged: dict[str, Any], sources: dict[str, str], flat: dict[str, Any], source: str
) -> None:
    for dotted, value in flat.items():
        target = merged
        *parents, leaf = dotted.split(".")
        for parent in parents:
            existing = target.get(parent)
            if not isinstance(existing, dict):
                existing = {}
                target[parent] = existing
            target = existing
        target[leaf] = value
        sources[dotted] = source


def _describe(error: ValidationError, sources: Mapping[str, str]) -> str:
    lines = ["invalid client configuration:"]
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(settings)"
        source = sources.get(key) or _source_of_parent(key, sources)
        where = f" (from {source})" if source else ""
        if problem["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{key}'{where}; valid keys: {_valid_keys(key)}")
        else:
            message = str(problem["msg"]).removeprefix("Value error, ")
            lines.append(f"  {key}{where}: {message}")
    return "\n".join(lines)


def _source_of_parent(key: str, sources: Mapping[str, str]) -> str:
    prefix = key + "."
    return next((src for dotted, src in sources.items() if dotted.startswith(prefix)), "")


def _valid_keys(key: str) -> str:
    model: type[BaseModel] = ClientSettings
    for part in key.split(".")[:-1]:
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return ", ".join(model.model_fields)
