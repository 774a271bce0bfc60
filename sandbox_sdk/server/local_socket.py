"""The gateway's Unix socket for local tools: claimed, made private, removed at stop.

The SDK sends the local admin key only to this socket (see
:mod:`sandbox_sdk.config.local_server`), so the socket is the proof that a
client talks to the local server: it lives in a directory only its owner can
enter (the embedded server's data dir, mode 0700) and is itself mode 0600.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

from sandbox_sdk.errors import ConfigError

# sockaddr_un.sun_path holds 108 bytes on Linux, including the final NUL.
MAX_SOCKET_PATH_BYTES = 107


def claim(path: Path) -> str:
    """The ``unix:`` address to bind for ``path``, after removing a stale socket there.

    Raises :class:`ConfigError` when the path is too long for a socket, when
    something that is not a socket is in the way, or when another server
    still answers on it (two servers must not share a data dir).
    """
    encoded = os.fsencode(path)
    if len(encoded) > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(
            f"the Unix socket path {path} is {len(encoded)} bytes, more than the "
            f"{MAX_SOCKET_PATH_BYTES} a socket address holds; use a shorter data dir"
        )
    try:
        info = path.lstat()
    except FileNotFoundError:
        return f"unix:{path}"
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"{path} exists and is not a socket; move it away and start again")
    if _answers(path):
        raise ConfigError(
            f"another server is listening on {path}; stop it, or give this one its own data dir"
        )
    path.unlink()
    return f"unix:{path}"


def restrict(path: Path) -> None:
    """Makes the bound socket reachable by its owner only (mode 0600)."""
    os.chmod(path, 0o600)


def release(path: Path) -> None:
    """Removes the socket file after the server stopped (nothing if it is gone)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(os.fspath(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True
