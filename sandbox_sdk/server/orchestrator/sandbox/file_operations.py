"""Remove, rename, make a directory and stat inside a workspace, symlinks never followed.

Every operation reaches the parent of its path with ``Workspace.open_directory``
(one component at a time, ``O_NOFOLLOW``) and acts on the last name relative
to that descriptor, so neither a symlink nor ``..`` planted by the sandbox,
even concurrently, leads the orchestrator (root) out of the workspace. A
symlink as the last component is acted on itself: removed, renamed or
stat'ed, never its target.

These functions block on disk I/O; callers run them off the event loop.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
from collections.abc import Sequence

from sandbox_sdk.server.orchestrator.sandbox.environment_record import FileEntry
from sandbox_sdk.server.orchestrator.sandbox.workspace import (
    Workspace,
    WorkspacePathError,
    file_entry,
)

_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)


class DestinationPathError(ValueError):
    """A rename's destination path that is refused (the source was fine)."""


class WorkspaceConflict(ValueError):
    """The operation would replace something the caller did not allow it to."""


class DirectoryNotEmpty(ValueError):
    """A directory that would have to be empty (removed, or replaced by a rename) is not."""


class MissingParent(ValueError):
    """The directory a path would be made in does not exist."""


def remove(workspace: Workspace, parts: Sequence[str], *, recursive: bool) -> bool:
    """Removes the entry at ``parts`` (a directory only when empty, unless
    ``recursive``); returns whether there was one. A symlink is removed itself."""
    try:
        parent = workspace.open_directory(parts[:-1])
    except FileNotFoundError:
        return False
    try:
        try:
            info = os.lstat(parts[-1], dir_fd=parent)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(parts[-1], dir_fd=parent)
        elif recursive:
            # With dir_fd, rmtree walks by descriptors and never follows symlinks.
            shutil.rmtree(parts[-1], dir_fd=parent)
        else:
            _remove_empty_directory(parts, parent)
        return True
    finally:
        os.close(parent)


def _remove_empty_directory(parts: Sequence[str], parent: int) -> None:
    try:
        os.rmdir(parts[-1], dir_fd=parent)
    except OSError as error:
        if error.errno != errno.ENOTEMPTY:
            raise
        raise DirectoryNotEmpty(
            f"'{'/'.join(parts)}' is a directory that is not empty; set recursive to remove"
            " it with everything in it"
        ) from error


def rename(
    workspace: Workspace,
    source: Sequence[str],
    destination: Sequence[str],
    *,
    overwrite: bool,
) -> FileEntry:
    """Moves the entry at ``source`` to ``destination`` (whose parent must exist);
    an existing destination is replaced only with ``overwrite`` (a directory only
    when empty). Returns the entry at its new path."""
    if tuple(destination[: len(source)]) == tuple(source):
        raise DestinationPathError(
            "is the source or inside it; a directory cannot move into itself"
        )
    source_parent = workspace.open_directory(source[:-1])
    try:
        try:
            destination_parent = _existing_parent(workspace, destination)
        except WorkspacePathError as error:
            raise DestinationPathError(str(error)) from error
        try:
            os.lstat(source[-1], dir_fd=source_parent)  # FileNotFoundError: no source
            _rename_at(source, source_parent, destination, destination_parent, overwrite)
            return file_entry(destination, os.lstat(destination[-1], dir_fd=destination_parent))
        finally:
            os.close(destination_parent)
    finally:
        os.close(source_parent)


def _rename_at(
    source: Sequence[str],
    source_parent: int,
    destination: Sequence[str],
    destination_parent: int,
    overwrite: bool,
) -> None:
    shown = "/".join(destination)
    try:
        if overwrite:
            os.rename(
                source[-1], destination[-1], src_dir_fd=source_parent, dst_dir_fd=destination_parent
            )
        else:
            _rename_no_replace(source[-1], source_parent, destination[-1], destination_parent)
    except OSError as error:
        if error.errno == errno.EEXIST:
            raise WorkspaceConflict(
                f"'{shown}' already exists; set overwrite to replace it, or remove it first"
            ) from error
        if error.errno == errno.ENOTEMPTY:
            raise DirectoryNotEmpty(
                f"'{shown}' is a directory that is not empty, which a rename never replaces;"
                " remove it first"
            ) from error
        if error.errno in (errno.EISDIR, errno.ENOTDIR):
            raise WorkspaceConflict(
                f"'{shown}' exists and is not the same kind (file or directory) as the source;"
                " remove it first"
            ) from error
        raise


def _rename_no_replace(name: str, source_fd: int, new_name: str, destination_fd: int) -> None:
    """renameat2(RENAME_NOREPLACE): the kernel refuses an existing destination
    atomically, so a file the sandbox creates meanwhile is never clobbered."""
    result = _libc.renameat2(
        source_fd, os.fsencode(name), destination_fd, os.fsencode(new_name), _RENAME_NOREPLACE
    )
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def make_directory(
    workspace: Workspace, parts: Sequence[str], *, parents: bool, mode: int
) -> FileEntry:
    """Makes the directory ``parts`` (and, with ``parents``, the missing ones above
    it) owned by the sandbox's user; an existing directory is returned as it is."""
    parent = (
        workspace.open_directory(parts[:-1], create=True)
        if parents
        else _existing_parent(workspace, parts)
    )
    try:
        try:
            os.mkdir(parts[-1], mode, dir_fd=parent)
        except FileExistsError:
            pass
        else:
            if workspace.owner is not None:
                os.chown(parts[-1], *workspace.owner, dir_fd=parent, follow_symlinks=False)
            # mkdir applies the umask; the caller asked for exactly these bits.
            os.chmod(parts[-1], mode, dir_fd=parent, follow_symlinks=False)
        info = os.lstat(parts[-1], dir_fd=parent)
        if not stat.S_ISDIR(info.st_mode):
            raise WorkspaceConflict(
                f"'{'/'.join(parts)}' exists and is not a directory; remove it first"
            )
        return file_entry(parts, info)
    finally:
        os.close(parent)


def stat_entry(workspace: Workspace, parts: Sequence[str]) -> FileEntry | None:
    """The metadata of the entry at ``parts`` (a symlink's own), or None when
    there is none; the empty path is the workspace's root."""
    if not parts:
        fd = workspace.open_directory(())
        try:
            return file_entry((), os.fstat(fd))
        finally:
            os.close(fd)
    try:
        parent = workspace.open_directory(parts[:-1])
    except FileNotFoundError:
        return None
    try:
        return file_entry(parts, os.lstat(parts[-1], dir_fd=parent))
    except FileNotFoundError:
        return None
    finally:
        os.close(parent)


def _existing_parent(workspace: Workspace, parts: Sequence[str]) -> int:
    """A descriptor of the parent directory of ``parts``, which must exist."""
    try:
        return workspace.open_directory(parts[:-1])
    except FileNotFoundError as error:
        parent = "/".join(parts[:-1])
        raise MissingParent(
            f"the directory '{parent}' does not exist; make it first (MakeDirectory with parents)"
        ) from error
