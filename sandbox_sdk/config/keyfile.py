"""Finding the API key to send, and where to send it.

The key is, in order: the ``api_key`` setting, the contents of ``api_key_file``,
and the local admin key ``<data_dir>/admin.key``, which goes only to the local
server's Unix socket (see :mod:`sandbox_sdk.config.local_server`). Without any
of these the client sends no key, and the server answers UNAUTHENTICATED
saying how to get one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sandbox_sdk.config.local_server import local_server_socket, require_private
from sandbox_sdk.errors import AuthenticationError, ConfigError

ADMIN_KEY_FILENAME = "admin.key"


def admin_key_path(data_dir: Path) -> Path:
    """The file where the embedded server writes the local operator's admin key."""
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


@dataclass(frozen=True)
class ResolvedKey:
    """The key to send (``None``: send none) and the target to send it to."""

    secret: str | None = field(repr=False)
    target: str


def resolve_api_key(
    *, api_key: str | None, api_key_file: Path | None, target: str, data_dir: Path
) -> ResolvedKey:
    """``api_key``, else ``api_key_file``, else the local admin key for the local socket.

    The local admin key is used only when ``target`` is ``data_dir``'s Unix
    socket and that socket passes :func:`require_private`; the target is then
    pinned to the socket's real path, so it cannot be swapped for another
    after the check.
    """
    if api_key:
        return ResolvedKey(api_key, target)
    if api_key_file is not None:
        return ResolvedKey(read_key_file(api_key_file), target)
    socket = local_server_socket(target, data_dir)
    if socket is None:
        return ResolvedKey(None, target)
    require_private(socket)
    key_file = admin_key_path(socket.parent)
    if not key_file.exists():
        raise AuthenticationError(
            f"no API key: none was given and {key_file} does not exist. Restart the local "
            "server with `sandbox-sdk serve` (it writes that file), or set SANDBOX_API_KEY"
        )
    return ResolvedKey(read_key_file(key_file), f"unix:{socket}")
