"""Which server is the local one: the embedded server's Unix socket in its private data dir.

The SDK sends the local admin key (``<data_dir>/admin.key``) by itself only to a
server that proves it is the one that wrote that key: it listens on the Unix
socket ``<data_dir>/gateway.sock``, in a data dir that only its owner can
enter. No other user, and no sandbox, can create that socket, so no one else
can receive the key. A port number or a loopback address proves nothing: any
local process, or a sandbox sharing the host's network, can listen on one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sandbox_sdk.errors import ConfigError

SOCKET_FILENAME = "gateway.sock"
TCP_DEFAULT_TARGET = "127.0.0.1:50051"
_UNIX_SCHEMES = ("unix://", "unix:")


def socket_path(data_dir: Path) -> Path:
    """The Unix socket the embedded server listens on inside ``data_dir``."""
    return data_dir.expanduser() / SOCKET_FILENAME


def socket_target(data_dir: Path) -> str:
    """The gRPC target of :func:`socket_path`."""
    return f"unix:{socket_path(data_dir)}"


def default_target(data_dir: Path) -> str:
    """The local server's socket when it exists, else ``127.0.0.1:50051``."""
    try:
        is_socket = stat.S_ISSOCK(socket_path(data_dir).lstat().st_mode)
    except OSError:
        is_socket = False
    return socket_target(data_dir) if is_socket else TCP_DEFAULT_TARGET


def unix_socket_of(target: str) -> Path | None:
    """The file a ``unix:`` gRPC target names; ``None`` for every other kind of target.

    ``unix-abstract:`` sockets have no file and no permissions, so they are
    never a local server's proof.
    """
    for scheme in _UNIX_SCHEMES:
        if target.startswith(scheme):
            rest = target[len(scheme) :]
            return Path(rest) if rest else None
    return None


def local_server_socket(target: str, data_dir: Path) -> Path | None:
    """The real path of ``data_dir``'s socket when ``target`` names it, else ``None``.

    Both paths are resolved (symbolic links followed) before they are
    compared, so neither a link to the socket nor a ``..`` makes another
    socket pass for it.
    """
    named = unix_socket_of(target)
    if named is None:
        return None
    try:
        resolved = named.resolve(strict=True)
        expected = socket_path(data_dir).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return resolved if resolved == expected else None


def require_private(socket: Path) -> None:
    """Raises :class:`ConfigError` unless only this user could have made ``socket``.

    ``socket`` is a resolved path. It must be a socket owned by this user, in a
    directory owned by this user that no one else may enter (mode 0700), and
    every directory above it must be safe from renaming by others: owned by
    this user or root, and not writable by others unless sticky (like /tmp).
    """
    directory = socket.parent
    uid = os.geteuid()
    _require_own_socket(socket, uid)
    info = directory.stat()
    if info.st_uid != uid:
        raise _refusal(directory, f"it belongs to uid {info.st_uid}, not to you (uid {uid})")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise _refusal(
            directory,
            f"others may enter it (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run `chmod 700 {directory}`",
        )
    for ancestor in directory.parents:
        _require_safe_ancestor(ancestor, directory, uid)


def _require_own_socket(socket: Path, uid: int) -> None:
    info = socket.lstat()
    if not stat.S_ISSOCK(info.st_mode):
        raise _refusal(socket.parent, f"{socket} is not a socket")
    if info.st_uid != uid:
        raise _refusal(
            socket.parent, f"{socket} belongs to uid {info.st_uid}, not to you (uid {uid})"
        )


def _require_safe_ancestor(ancestor: Path, directory: Path, uid: int) -> None:
    info = ancestor.stat()
    mode = stat.S_IMODE(info.st_mode)
    writable_by_others = bool(mode & 0o022) and not mode & stat.S_ISVTX
    if info.st_uid not in (0, uid) or writable_by_others:
        raise _refusal(
            directory,
            f"{ancestor} can be changed by other users (owner uid {info.st_uid}, mode "
            f"{mode:04o}), who could put their own socket in its place; use a data dir "
            "under a directory only you and root can write",
        )


def _refusal(directory: Path, problem: str) -> ConfigError:
    return ConfigError(
        f"not sending the local admin key to the server in {directory}: {problem}. "
        "Alternatively pass a key explicitly (api_key=..., SANDBOX_API_KEY or api_key_file)"
    )
