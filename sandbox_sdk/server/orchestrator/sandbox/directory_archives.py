"""A workspace directory as a tar stream, and a tar stream unpacked into one, safely.

Out (:func:`tar_chunks`): a POSIX (pax) archive generated entry by entry
while the tree is walked by descriptors; symlinks are archived as links and
never followed, special files (devices, fifos, sockets) are left out, and a
file that changes size while it is read is cut or padded to the size its
header announced, so the archive stays well formed.

In (:func:`unpack`): the archive is attacker-written. Every member is checked
before anything of it is written: a plain relative name (no absolute path, no
``..``), a regular file, directory or symlink (no hard link, device or fifo),
no setuid or setgid bit, a symlink target that stays inside the workspace, at
most :data:`MAX_MEMBERS` members and no more bytes than the workspace's quota.
Members are unpacked into a staging directory on the environment's own file
system that the sandbox cannot see (so the kernel's quota counts them and no
process can race the unpacking), and only a complete, valid archive is moved
into the workspace, by renames. Files belong to the sandbox's user.

These functions block; callers run them off the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
import stat
import tarfile
import uuid
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Protocol, cast

from sandbox_sdk.server.orchestrator.sandbox.workspace import (
    Workspace,
    WorkspacePathError,
    WorkspaceQuotaExceeded,
    split_path,
)

CHUNK_BYTES = 256 * 1024
MAX_MEMBERS = 100_000
_BLOCK = tarfile.BLOCKSIZE
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_STAGING_PREFIX = ".upload-"


class ArchiveMemberError(ValueError):
    """A member of an uploaded archive that is refused; ``member`` is its name."""

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"archive member '{member}' {reason}")
        self.member = member


class InvalidArchive(ValueError):
    """Bytes that are not an uncompressed tar stream."""


# --- out -------------------------------------------------------------------------------


def tar_chunks(workspace: Workspace, parts: Sequence[str]) -> Generator[bytes, None, None]:
    """The directory ``parts`` as a pax tar stream, in chunks of about
    :data:`CHUNK_BYTES`; names are relative to the directory."""
    root = workspace.open_directory(parts)
    buffer = bytearray()
    try:
        for piece in _tree(root, ""):
            buffer += piece
            if len(buffer) >= CHUNK_BYTES:
                yield bytes(buffer)
                buffer.clear()
        buffer += bytes(2 * _BLOCK)  # the end-of-archive marker
        yield bytes(buffer)
    finally:
        os.close(root)


def _tree(dir_fd: int, prefix: str) -> Iterator[bytes]:
    """Headers and contents of everything below ``dir_fd``, in name order."""
    for name in sorted(os.listdir(dir_fd)):
        try:
            info = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue  # removed since the directory was read
        member = f"{prefix}{name}"
        if stat.S_ISDIR(info.st_mode):
            yield from _directory(dir_fd, name, member, info)
        elif stat.S_ISREG(info.st_mode):
            yield from _regular_file(dir_fd, name, member)
        elif stat.S_ISLNK(info.st_mode):
            yield _header(member, tarfile.SYMTYPE, info, linkname=os.readlink(name, dir_fd=dir_fd))
        # Devices, fifos and sockets have no content to carry and are left out.


def _directory(dir_fd: int, name: str, member: str, info: os.stat_result) -> Iterator[bytes]:
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return  # replaced (by a symlink, say) since it was listed: not followed
    try:
        yield _header(member + "/", tarfile.DIRTYPE, info)
        yield from _tree(fd, member + "/")
    finally:
        os.close(fd)


def _regular_file(dir_fd: int, name: str, member: str) -> Iterator[bytes]:
    try:
        fd = os.open(name, _FILE_READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return  # removed or replaced by a symlink since it was listed
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return
        yield _header(member, tarfile.REGTYPE, info, size=info.st_size)
        left = info.st_size
        while left > 0:
            chunk = os.read(fd, min(left, CHUNK_BYTES))
            if not chunk:
                yield bytes(left)  # it shrank while being read: pad to the announced size
                break
            left -= len(chunk)
            yield chunk
        yield bytes(-info.st_size % _BLOCK)
    finally:
        os.close(fd)


def _header(
    member: str, kind: bytes, info: os.stat_result, *, size: int = 0, linkname: str = ""
) -> bytes:
    header = tarfile.TarInfo(member)
    header.type = kind
    header.size = size
    header.mode = stat.S_IMODE(info.st_mode)
    header.mtime = int(info.st_mtime)
    header.linkname = linkname
    return header.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


# --- in --------------------------------------------------------------------------------


class ChunkSource(Protocol):
    """Where :func:`unpack` reads the archive from: a blocking ``read``."""

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes; empty at the end of the stream."""
        ...


@dataclass(frozen=True)
class Unpacked:
    """What an upload wrote."""

    files_written: int
    bytes_written: int


def unpack(workspace: Workspace, parts: Sequence[str], source: ChunkSource) -> Unpacked:
    """Unpacks the tar stream ``source`` into the directory ``parts`` (made when
    missing): all of it, or (on any error) nothing."""
    staging_name = f"{_STAGING_PREFIX}{uuid.uuid4().hex}"
    mount_fd = os.open(workspace.layout.mount_point, _DIR_FLAGS)
    try:
        os.mkdir(staging_name, 0o700, dir_fd=mount_fd)
        staging = os.open(staging_name, _DIR_FLAGS, dir_fd=mount_fd)
        try:
            written = _Extraction(workspace, staging, parts).run(source)
            target = workspace.open_directory(parts, create=True)
            try:
                _require_no_conflicts(staging, target, "")
                _move_into(staging, target)
            finally:
                os.close(target)
            return written
        finally:
            os.close(staging)
            shutil.rmtree(staging_name, dir_fd=mount_fd, ignore_errors=True)
    finally:
        os.close(mount_fd)


class _Extraction:
    """One archive unpacked into a staging directory, member by checked member."""

    def __init__(self, workspace: Workspace, staging: int, destination: Sequence[str]) -> None:
        self._workspace = workspace
        self._staging = staging
        self._destination = tuple(destination)
        self._budget = _quota_left(workspace)
        self._members = 0
        self._files = 0
        self._bytes = 0

    def run(self, source: ChunkSource) -> Unpacked:
        try:
            archive = tarfile.open(fileobj=cast(IO[bytes], _Readable(source)), mode="r|")  # noqa: SIM115 (closed below)
        except tarfile.ReadError as error:
            raise InvalidArchive(f"is not an uncompressed tar stream ({error})") from error
        with archive:
            try:
                for member in archive:
                    self._extract(member, archive)
            except tarfile.TarError as error:
                raise InvalidArchive(f"is not a well-formed tar stream ({error})") from error
        return Unpacked(self._files, self._bytes)

    def _extract(self, member: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
        self._members += 1
        if self._members > MAX_MEMBERS:
            raise ArchiveMemberError(
                member.name, f"is past the limit of {MAX_MEMBERS} members; upload fewer files"
            )
        parts = _member_parts(member)
        if not parts:
            return  # "." or "./": the destination itself
        _require_safe_kind(member)
        parent = self._parent(member.name, parts)
        try:
            _clear_for(member, parts[-1], parent)
            if member.isdir():
                self._make_directory(member, parts[-1], parent)
            elif member.issym():
                self._make_symlink(member, parts, parent)
            else:
                self._write_file(member, parts[-1], parent, archive)
        finally:
            os.close(parent)

    def _parent(self, name: str, parts: Sequence[str]) -> int:
        """The staged parent of a member, made (as tar does) when the archive lists
        no directory for it, reached without following any symlink it holds."""
        fd = os.dup(self._staging)
        try:
            for part in parts[:-1]:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                    self._own(part, fd)
                try:
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as error:
                    raise ArchiveMemberError(
                        name, f"goes through '{part}', which the archive made a symlink or file"
                    ) from error
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _make_directory(self, member: tarfile.TarInfo, name: str, parent: int) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent)
        self._own(name, parent)
        os.chmod(name, member.mode & 0o777, dir_fd=parent, follow_symlinks=False)

    def _make_symlink(self, member: tarfile.TarInfo, parts: Sequence[str], parent: int) -> None:
        _require_inside(member, (*self._destination, *parts))
        os.symlink(member.linkname, parts[-1], dir_fd=parent)
        self._own(parts[-1], parent)

    def _write_file(
        self, member: tarfile.TarInfo, name: str, parent: int, archive: tarfile.TarFile
    ) -> None:
        self._bytes += member.size
        if self._bytes > self._budget:
            raise WorkspaceQuotaExceeded(
                errno.ENOSPC, f"the archive holds more than the {self._budget} bytes left"
            )
        contents = archive.extractfile(member)
        if contents is None:
            raise ArchiveMemberError(member.name, "has no contents")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=parent)
        try:
            if self._workspace.owner is not None:
                os.fchown(fd, *self._workspace.owner)
            _copy(contents, fd)
            os.fchmod(fd, member.mode & 0o777)
            with contextlib.suppress(OverflowError, ValueError, OSError):
                os.utime(fd, (member.mtime, member.mtime))  # the archive's, if representable
            os.fsync(fd)
        finally:
            os.close(fd)
        self._files += 1

    def _own(self, name: str, dir_fd: int) -> None:
        if self._workspace.owner is not None:
            os.chown(name, *self._workspace.owner, dir_fd=dir_fd, follow_symlinks=False)


class _Readable:
    """``source`` as the file object tarfile's stream mode reads."""

    def __init__(self, source: ChunkSource) -> None:
        self._source = source

    def read(self, size: int = -1) -> bytes:
        return self._source.read(size)


def _quota_left(workspace: Workspace) -> int:
    """Bytes an upload may still write. With a kernel quota the file system refuses
    past it too; this fails an over-large archive before its bytes are written."""
    return max(0, workspace.quota_bytes - workspace.disk_used())


def _member_parts(member: tarfile.TarInfo) -> tuple[str, ...]:
    if member.name.startswith("/"):
        raise ArchiveMemberError(member.name, "is absolute; archive paths relative to a directory")
    try:
        return split_path(member.name, allow_root=True)
    except WorkspacePathError as error:
        raise ArchiveMemberError(member.name, str(error)) from error


def _require_safe_kind(member: tarfile.TarInfo) -> None:
    if member.islnk():
        raise ArchiveMemberError(
            member.name, "is a hard link, which uploads refuse; archive the file itself"
        )
    if not (member.isreg() or member.isdir() or member.issym()):
        raise ArchiveMemberError(
            member.name,
            "is a device, fifo or other special file, which uploads refuse; archive regular"
            " files, directories and symlinks only",
        )
    if member.mode & (stat.S_ISUID | stat.S_ISGID):
        raise ArchiveMemberError(
            member.name, "has the setuid or setgid bit, which uploads refuse; clear it"
        )


def _require_inside(member: tarfile.TarInfo, final_parts: Sequence[str]) -> None:
    """A symlink's target, resolved where the link will be, stays in the workspace."""
    target = member.linkname
    if not target or "\x00" in target or target.startswith("/"):
        raise ArchiveMemberError(
            member.name,
            f"is a symlink to '{target}'; a link must point to a relative path inside the"
            " workspace",
        )
    resolved = posixpath.normpath(posixpath.join("/".join(final_parts[:-1]), target))
    if resolved == ".." or resolved.startswith("../"):
        raise ArchiveMemberError(
            member.name, f"is a symlink to '{target}', which points outside the workspace"
        )


def _clear_for(member: tarfile.TarInfo, name: str, parent: int) -> None:
    """Makes room for a member whose name an earlier member took (tar's last-wins)."""
    try:
        existing = os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(existing.st_mode):
        if member.isdir():
            return
        raise ArchiveMemberError(member.name, "names a directory an earlier member made")
    os.unlink(name, dir_fd=parent)


def _copy(contents: IO[bytes], fd: int) -> None:
    while chunk := contents.read(CHUNK_BYTES):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


def _require_no_conflicts(staged: int, target: int, shown: str) -> None:
    """Checked before anything moves: a staged entry may replace a file or symlink,
    and a staged directory merges into a directory; nothing else is touched."""
    for name in os.listdir(staged):
        mine = os.lstat(name, dir_fd=staged)
        try:
            theirs = os.lstat(name, dir_fd=target)
        except FileNotFoundError:
            continue
        both_dirs = stat.S_ISDIR(mine.st_mode) and stat.S_ISDIR(theirs.st_mode)
        if both_dirs:
            with _opened(name, staged) as inner, _opened(name, target) as outer:
                _require_no_conflicts(inner, outer, f"{shown}{name}/")
        elif stat.S_ISDIR(mine.st_mode) or stat.S_ISDIR(theirs.st_mode):
            raise ArchiveMemberError(
                f"{shown}{name}",
                "would replace a directory with a file or a file with a directory in the"
                " workspace; remove it first",
            )


def _move_into(staged: int, target: int) -> None:
    for name in os.listdir(staged):
        mine = os.lstat(name, dir_fd=staged)
        if stat.S_ISDIR(mine.st_mode):
            try:
                theirs = os.lstat(name, dir_fd=target)
            except FileNotFoundError:
                theirs = None
            if theirs is not None and stat.S_ISDIR(theirs.st_mode):
                with _opened(name, staged) as inner, _opened(name, target) as outer:
                    _move_into(inner, outer)
                continue
        os.rename(name, name, src_dir_fd=staged, dst_dir_fd=target)


@contextlib.contextmanager
def _opened(name: str, dir_fd: int) -> Iterator[int]:
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)
