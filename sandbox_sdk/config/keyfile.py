"""Where the local server keeps its data, and finding the API key to use."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from sandbox_sdk.errors import AuthenticationError, ConfigError

ADMIN_KEY_FILENAME = "admin.key"
_LOCAL_HOSTNAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def admin_key_path(data_dir: Path) -> Path:
    """The file where the embedded server writes the ``default`` tenant's admin key."""
    return data_dir.expanduser() / ADMIN_KEY_FILENAME


def read_key_file(path: Path) -> str:
    """The key stored alone on the first line of ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(
            f"cannot read the API key file {path}: {error.strerror}; "
            "check the path and its permissions"
        ) from error
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise ConfigError(f"the API key file {path} is empty; put the key alone on one line")
    return key


def target_host(target: str) -> str:
    """The host part of a gRPC target such as ``dns:///host:port`` or ``[::1]:50051``."""
    rest = target
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if rest.startswith(scheme):
            rest = rest[len(scheme) :]
            break
    if rest.startswith("["):
        return rest[1 : rest.find("]")] if "]" in rest else rest[1:]
    if rest.count(":") == 1:
        return rest.split(":", 1)[0]
    return rest


def is_loopback(target: str) -> bool:
    """Whether ``target`` names this machine (loopback address, localhost or a unix socket)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    host = target_host(target).lower()
    if host in _LOCAL_HOSTNAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def discover_local_key(target: str, data_dir: Path) -> str:
    """The embedded server's admin key for a loopback ``target``.

    Raises :class:`AuthenticationError` saying how to get a key when there is none.
    """
    path = admin_key_path(data_dir)
    if not is_loopback(target):
        raise AuthenticationError(
            f"no API key for {target}: pass api_key=..., set SANDBOX_API_KEY, "
            "or set api_key_file in the config file"
        )
    if not path.exists():
        raise AuthenticationError(
            f"no API key: none was given and {path} does not exist. Start the local server "
            "with `sandbox-sdk serve` (it writes that file), or set SANDBOX_API_KEY"
        )
    return read_key_file(path)


def resolve_api_key(
    *, api_key: str | None, api_key_file: Path | None, target: str, data_dir: Path
) -> str:
    """The key to send: ``api_key``, else ``api_key_file``, else the local admin key."""
    if api_key:
        return api_key
    if api_key_file is not None:
        return read_key_file(api_key_file)
    return discover_local_key(target, data_dir)
