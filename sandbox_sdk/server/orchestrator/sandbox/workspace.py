"""An environment's files on the host, and safe file operations inside them.

With a disk quota (root, loop devices, ``mkfs.ext4``) each environment gets
its own ext4 file system in a sparse image file, loop-mounted: the kernel
enforces the quota (ENOSPC), the orchestrator sees the files for the file
calls, and ``statvfs`` reports the usage without walking the tree. Without
it the workspace is a plain directory, RLIMIT_FSIZE bounds single files and
the monitor checks the total.

The file system holds ``workspace/`` (``/workspace`` in the sandbox) and
``tmp/`` (``/tmp``), and for an environment of a template ``overlay/`` (the
private writable layer over the template's shared, read-only root file
system) and ``root/``, where the orchestrator mounts that overlay for
bubblewrap to bind at ``/``; its root stays root-owned, so the sandbox cannot swap
either for a symlink. Every file call walks the path one component at a time
with ``O_NOFOLLOW`` relative to the previous directory's descriptor, so
symlinks (and ``..``) never lead out of the workspace, whatever the sandbox
does to it concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import re
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sandbox_sdk.server.orchestrator.sandbox.environment_record import FileEntry
from sandbox_sdk.server.orchestrator.sandbox.host_env import host_process_env
from sandbox_sdk.server.orchestrator.sandbox.listing import LISTINGS

_MAX_PATH_BYTES = 4096
_MAX_NAME_BYTES = 255
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_libc = ctypes.CDLL(None, use_errno=True)
# mount(2) flags (linux/mount.h).
_MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_NOATIME, _MS_BIND = 0x2, 0x4, 0x20, 0x400, 0x1000


class WorkspacePathError(ValueError):
    """A path the file calls refuse; the message says why and what to do."""


class WorkspaceFileTooLarge(ValueError):
    """A file larger than a single read may return."""


class WorkspaceQuotaExceeded(OSError):
    """A write that would take the workspace past its disk quota."""


def split_path(path: str, *, allow_root: bool = False) -> tuple[str, ...]:
    """Checks a workspace-relative path and returns its components.

    Raises :class:`WorkspacePathError` for NUL bytes, absolute paths, ``..``
    components, over-long names, and (unless ``allow_root``) the empty path.
    """
    if "\x00" in path:
        raise WorkspacePathError("contains a NUL byte; remove it")
    if path.startswith("/"):
        raise WorkspacePathError(
            "is absolute; give a path relative to the workspace root, such as 'src/main.py'"
        )
    if len(path.encode()) > _MAX_PATH_BYTES:
        raise WorkspacePathError(f"is longer than {_MAX_PATH_BYTES} bytes; shorten it")
    parts = tuple(part for part in path.split("/") if part not in ("", "."))
    if ".." in parts:
        raise WorkspacePathError("contains '..'; paths must stay inside the workspace")
    for part in parts:
        if len(part.encode()) > _MAX_NAME_BYTES:
            raise WorkspacePathError(f"has a name longer than {_MAX_NAME_BYTES} bytes")
    if not parts and not allow_root:
        raise WorkspacePathError("is empty; name a file such as 'data/input.txt'")
    return parts


@dataclass(frozen=True)
class WorkspaceLayout:
    """Where one environment's files live on the host.

    ``mount_point`` is what the sandboxes bind; with privilege dropping it sits
    under a root-owned directory every sandbox uid may traverse, because
    bubblewrap resolves bind sources as that uid.
    """

    storage: Path
    image: Path
    mount_point: Path

    @classmethod
    def for_environment(
        cls, workspace_root: Path, mount_root: Path | None, environment_id: str
    ) -> WorkspaceLayout:
        """The layout of ``environment_id``; ``mount_root`` None mounts in place."""
        storage = workspace_root / environment_id
        mount_point = mount_root / environment_id if mount_root is not None else storage
        return cls(storage, workspace_root / f"{environment_id}.img", mount_point)

    @property
    def files_dir(self) -> Path:
        """The host directory that is ``/workspace`` in the sandbox."""
        return self.mount_point / "workspace"

    @property
    def tmp_dir(self) -> Path:
        """The host directory that is ``/tmp`` in the sandbox."""
        return self.mount_point / "tmp"

    @property
    def overlay_dir(self) -> Path:
        """The overlay's private writable layer (``upper``) and its ``work`` directory."""
        return self.mount_point / "overlay"

    @property
    def runtime_dir(self) -> Path:
        """The isolation runtime's own files for the environment (gVisor's bundle), beside
        its mount point: root's, out of reach of the sandbox uid, which owns the mount."""
        return self.mount_point.with_name(f"{self.mount_point.name}.runtime")

    @property
    def root_dir(self) -> Path:
        """Where a template environment's overlay is mounted: its ``/``."""
        return self.mount_point / "root"


@dataclass(frozen=True)
class TemplateLayer:
    """A template's root file system as an environment's shared, read-only lower layer.

    ``mount_points`` (relative paths) are made in the private layer, so that
    bubblewrap, which cannot write the root-owned template, finds them.
    """

    rootfs: Path
    mount_points: tuple[PurePosixPath, ...]


async def _run(*argv: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=host_process_env(),
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        message = stderr.decode(errors="replace").strip()
        raise OSError(f"{' '.join(argv)} failed ({process.returncode}): {message}")


def _mounted(path: Path) -> bool:
    """Whether something is mounted at ``path``, per /proc/self/mountinfo.

    ``os.path.ismount`` compares device numbers and so misses a bind mount of
    a directory from the same file system.
    """
    target = os.path.abspath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
            return any(_unescape(line.split()[4]) == target for line in mountinfo)
    except OSError:
        return path.is_mount()


def _unescape(field: str) -> str:
    """Undoes mountinfo's octal escapes (``\\040`` for a space, and so on)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


async def _unmount(mount_point: Path) -> None:
    if not _mounted(mount_point):
        return
    try:
        await _run("umount", str(mount_point))
    except OSError:
        # Busy: detach it now; the kernel frees it when the last user goes.
        await _run("umount", "--lazy", str(mount_point))


async def destroy_layout(layout: WorkspaceLayout) -> None:
    """Unmounts and deletes everything of a workspace, whichever way it was made."""
    await _unmount(layout.root_dir)
    await _unmount(layout.mount_point)
    if layout.storage != layout.mount_point:
        await _unmount(layout.storage)
    with contextlib.suppress(FileNotFoundError):
        layout.image.unlink()
    for directory in dict.fromkeys((layout.mount_point, layout.storage, layout.runtime_dir)):
        if directory.exists() and not _mounted(directory):
            await asyncio.to_thread(shutil.rmtree, directory, True)


class Workspace:
    """One environment's workspace: its layout, quota and file operations."""

    def __init__(
        self,
        layout: WorkspaceLayout,
        *,
        quota_bytes: int,
        quota_enforced_by_kernel: bool,
        owner: tuple[int, int] | None,
    ) -> None:
        self.layout = layout
        self.quota_bytes = quota_bytes
        self.quota_enforced_by_kernel = quota_enforced_by_kernel
        self._owner = owner
        self._baseline_bytes = 0

    @classmethod
    async def create(
        cls,
        layout: WorkspaceLayout,
        *,
        quota_bytes: int,
        loop_quota: bool,
        owner: tuple[int, int] | None,
        template: TemplateLayer | None = None,
        ready: WorkspaceLayout | None = None,
    ) -> Workspace:
        """Makes the file system (or directory), mounts it and lays out its directories;
        with a ``template``, mounts its copy-on-write root too.

        ``ready`` is a loop file system of the same quota made ahead by
        :meth:`make_ready` (see :mod:`.workspace_pool`): it is moved to ``layout``
        instead of making one, then laid out as any other, and whatever happens
        it is never used again (a failure destroys it).
        """
        workspace = cls(
            layout, quota_bytes=quota_bytes, quota_enforced_by_kernel=loop_quota, owner=owner
        )
        try:
            if ready is not None:
                if not loop_quota:
                    raise ValueError("a ready file system needs the loop disk quota")
                await workspace._adopt(ready)
            elif loop_quota:
                await workspace._make_loop_filesystem()
            else:
                await workspace._make_directory()
            workspace._lay_out()
            if template is not None:
                await workspace._mount_template_root(template)
        except BaseException:
            if ready is not None:
                await destroy_layout(ready)
            await destroy_layout(layout)
            raise
        workspace._baseline_bytes = workspace._filesystem_used() if loop_quota else 0
        return workspace

    @classmethod
    async def make_ready(cls, layout: WorkspaceLayout, *, quota_bytes: int) -> None:
        """Makes and mounts a loop file system at ``layout`` to be adopted later by
        :meth:`create` (``ready``), which lays it out; on failure leaves nothing."""
        workspace = cls(layout, quota_bytes=quota_bytes, quota_enforced_by_kernel=True, owner=None)
        try:
            await workspace._make_loop_filesystem()
        except BaseException:
            await destroy_layout(layout)
            raise

    async def _make_loop_filesystem(self) -> None:
        layout = self.layout
        _make_sparse_file(layout.image, self.quota_bytes)
        await _run(
            "mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
            "-E", "lazy_itable_init=1,nodiscard", str(layout.image),
        )  # fmt: skip
        layout.mount_point.mkdir(mode=0o700)
        await _run(
            "mount", "-o", "loop,nosuid,nodev,noatime,noinit_itable",
            str(layout.image), str(layout.mount_point),
        )  # fmt: skip
        with contextlib.suppress(OSError):
            (layout.mount_point / "lost+found").rmdir()

    async def _adopt(self, ready: WorkspaceLayout) -> None:
        """Moves a file system made ahead to this layout: its image renamed, its mount
        bound at this mount point (nosuid, nodev, noatime, as :meth:`_make_loop_filesystem`
        mounts) and the mount made ahead removed; no process runs for it."""
        layout = self.layout
        if ready.image.parent != layout.image.parent:
            raise ValueError("a ready file system is adopted in its own workspace root")
        os.rename(ready.image, layout.image)
        layout.mount_point.mkdir(mode=0o700)
        source, target = os.fsencode(ready.mount_point), os.fsencode(layout.mount_point)
        _mount(source, target, _MS_BIND)
        _mount(source, target, _MS_REMOUNT | _MS_BIND | _MS_NOSUID | _MS_NODEV | _MS_NOATIME)
        if _libc.umount2(source, 0) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"unmounting {ready.mount_point}: {os.strerror(code)}")
        with contextlib.suppress(OSError):
            ready.mount_point.rmdir()
        if ready.storage != ready.mount_point:
            with contextlib.suppress(OSError):
                ready.storage.rmdir()

    async def _make_directory(self) -> None:
        layout = self.layout
        layout.storage.mkdir(mode=0o700)
        if layout.mount_point != layout.storage:
            layout.mount_point.mkdir(mode=0o700)
            await _run("mount", "--bind", str(layout.storage), str(layout.mount_point))
            await _run("mount", "-o", "remount,bind,nosuid,nodev", str(layout.mount_point))

    def _lay_out(self) -> None:
        """The workspace and /tmp, reachable only by root and the sandbox's uid: the
        files hold the tenant's data, and other users of the host have no business there."""
        for directory in (self.layout.mount_point, self.layout.files_dir, self.layout.tmp_dir):
            directory.mkdir(mode=0o700, exist_ok=directory == self.layout.mount_point)
            directory.chmod(0o700)
            if self._owner is not None:
                os.chown(directory, *self._owner)

    async def _mount_template_root(self, template: TemplateLayer) -> None:
        """The template's root as the read-only lower layer, a private upper layer on
        this file system (so the disk quota counts it), merged at ``root_dir``."""
        layout = self.layout
        upper, work = layout.overlay_dir / "upper", layout.overlay_dir / "work"
        for directory in (layout.overlay_dir, upper, work, layout.root_dir):
            directory.mkdir(mode=0o755)
        for point in template.mount_points:
            (upper / point).mkdir(mode=0o755, parents=True, exist_ok=True)
        options = f"lowerdir={template.rootfs},upperdir={upper},workdir={work},nosuid,nodev"
        await _run("mount", "-t", "overlay", "overlay", "-o", options, str(layout.root_dir))

    async def destroy(self) -> None:
        """Unmounts and deletes the workspace."""
        await destroy_layout(self.layout)

    # --- usage -------------------------------------------------------------------------

    def _filesystem_used(self) -> int:
        info = os.statvfs(self.layout.mount_point)
        return (info.f_blocks - info.f_bfree) * info.f_frsize

    def disk_used(self) -> int:
        """Bytes the environment's files take, ``/tmp`` included."""
        if self.quota_enforced_by_kernel:
            return max(0, self._filesystem_used() - self._baseline_bytes)
        layout = self.layout
        parts = (layout.files_dir, layout.tmp_dir, layout.overlay_dir)
        return sum(sum(_allocated_bytes(part)) for part in parts)

    def over_quota(self) -> bool:
        """Whether the files take more than the disk quota."""
        return self.disk_used() > self.quota_bytes

    # --- file operations ---------------------------------------------------------------

    def write_file(self, parts: Sequence[str], content: bytes, mode: int) -> FileEntry:
        """Writes a file, creating parent directories; returns its metadata."""
        if not self.quota_enforced_by_kernel and self.disk_used() + len(content) > self.quota_bytes:
            raise WorkspaceQuotaExceeded(errno.EDQUOT, "the workspace's disk quota is used up")
        parent = self._open_dir(parts[:-1], create=True)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK
            fd = open_at(parts, parent, flags | os.O_CLOEXEC, 0o600)
        finally:
            os.close(parent)
        try:
            _require_regular(parts, os.fstat(fd))
            if self._owner is not None:
                os.fchown(fd, *self._owner)
            os.fchmod(fd, mode)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            # Acknowledged means on disk: a full host disk shows up here (the loop
            # device's flush fails), not as a file lost after the answer.
            os.fsync(fd)
            return file_entry(parts, os.fstat(fd))
        finally:
            os.close(fd)

    def read_file(self, parts: Sequence[str], max_bytes: int) -> tuple[FileEntry, bytes]:
        """Reads a whole regular file of at most ``max_bytes``."""
        parent = self._open_dir(parts[:-1], create=False)
        try:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = open_at(parts, parent, flags, 0)
        finally:
            os.close(parent)
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise WorkspacePathError("is a directory; use ListFiles for directories")
            _require_regular(parts, info)
            if info.st_size > max_bytes:
                raise WorkspaceFileTooLarge(
                    f"is {info.st_size} bytes; a read returns at most {max_bytes} bytes, "
                    "so read it in pieces with a command such as `split` or `tail -c`"
                )
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
                if sum(map(len, chunks)) > max_bytes:
                    raise WorkspaceFileTooLarge(f"grew past {max_bytes} bytes while being read")
            return file_entry(parts, info), b"".join(chunks)
        finally:
            os.close(fd)

    def list_dir(self, parts: Sequence[str]) -> list[FileEntry]:
        """Every entry of a directory, sorted by path, symlinks not followed.

        This reads the whole directory; the file RPCs page with :meth:`list_page`.
        """
        fd = self._open_dir(parts, create=False)
        try:
            with os.scandir(fd) as entries:
                listed = [
                    file_entry((*parts, entry.name), entry.stat(follow_symlinks=False))
                    for entry in entries
                ]
        finally:
            os.close(fd)
        return sorted(listed, key=lambda e: e.path)

    def list_page(
        self, parts: Sequence[str], after: str, limit: int
    ) -> tuple[list[FileEntry], str | None]:
        """Up to ``limit`` entries of a directory whose names sort after ``after``, in
        order, and the name to resume after (None on the last page); symlinks are not
        followed.

        Only the page's own entries are stat'ed, and a large directory is read
        into a snapshot on a worker thread, never here (see ``listing``): this
        may raise ``ListingNotReady`` for a large directory seen for the first
        time.
        """
        fd = self._open_dir(parts, create=False)
        try:
            scope = (str(self.layout.files_dir), tuple(parts))
            names, more = LISTINGS.page(fd, scope, after, limit)
            entries = []
            for name in names:
                try:
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted since the directory was read
                entries.append(file_entry((*parts, name), info))
        finally:
            os.close(fd)
        return entries, names[-1] if more and names else None

    @property
    def owner(self) -> tuple[int, int] | None:
        """The sandbox's (uid, gid) that every file the orchestrator writes gets; None
        when commands run as the orchestrator's own user."""
        return self._owner

    def open_directory(self, parts: Sequence[str], *, create: bool = False) -> int:
        """A descriptor of the directory ``parts`` (made, with its parents, when
        ``create``), reached without following a symlink; the caller closes it."""
        return self._open_dir(parts, create=create)

    def require_directory(self, parts: Sequence[str]) -> None:
        """Raises unless ``parts`` names an existing directory (no symlinks on the way)."""
        os.close(self._open_dir(parts, create=False))

    def _open_dir(self, parts: Sequence[str], *, create: bool) -> int:
        fd = os.open(self.layout.files_dir, _DIR_FLAGS)
        try:
            for index, part in enumerate(parts):
                if create:
                    self._make_subdir(fd, part)
                next_fd = open_at(parts[: index + 1], fd, _DIR_FLAGS, 0)
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _make_subdir(self, dir_fd: int, name: str) -> None:
        try:
            os.mkdir(name, 0o755, dir_fd=dir_fd)
        except FileExistsError:
            return
        if self._owner is not None:
            os.chown(name, *self._owner, dir_fd=dir_fd, follow_symlinks=False)


def _mount(source: bytes, target: bytes, flags: int) -> None:
    if _libc.mount(source, target, None, ctypes.c_ulong(flags), None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mounting {os.fsdecode(target)}: {os.strerror(code)}")


def _make_sparse_file(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def open_at(parts: Sequence[str], dir_fd: int, flags: int, mode: int) -> int:
    """Opens the last of ``parts`` relative to ``dir_fd``, explaining refusals."""
    shown = "/".join(parts)
    try:
        return os.open(parts[-1], flags, mode, dir_fd=dir_fd)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            if _is_symlink(parts[-1], dir_fd):
                raise WorkspacePathError(
                    f"goes through the symlink '{shown}'; file calls do not follow symlinks"
                ) from error
            raise WorkspacePathError(f"goes through '{shown}', which is not a directory") from error
        if error.errno == errno.EISDIR:
            raise WorkspacePathError(f"names the directory '{shown}'") from error
        if error.errno == errno.ENXIO:
            raise WorkspacePathError(f"names '{shown}', which is not a regular file") from error
        raise


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _require_regular(parts: Sequence[str], info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise WorkspacePathError(f"names '{'/'.join(parts)}', which is not a regular file")


def file_entry(parts: Sequence[str], info: os.stat_result) -> FileEntry:
    """The metadata of the entry at ``parts`` whose (not followed) stat is ``info``."""
    is_dir = stat.S_ISDIR(info.st_mode)
    return FileEntry(
        path="/".join(parts),
        size_bytes=0 if is_dir else info.st_size,
        is_dir=is_dir,
        mode=stat.S_IMODE(info.st_mode),
        modify_time=info.st_mtime,
        is_symlink=stat.S_ISLNK(info.st_mode),
    )


def _allocated_bytes(root: Path) -> Iterator[int]:
    """Disk blocks of every file under ``root``, not following symlinks."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        with contextlib.suppress(OSError):
            info = entry.stat(follow_symlinks=False)
            yield info.st_blocks * 512
            if stat.S_ISDIR(info.st_mode):
                yield from _allocated_bytes(Path(entry.path))
