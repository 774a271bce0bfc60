"""A snapshot's tree: its source template's root, flattened with the environment's layer.

A snapshot is flattened, not layered: its ``rootfs`` is the source template's
root file system hard-linked (template trees are never written after their
build: environments change them only through their overlay's copy-up), then
the environment's private overlay layer applied on top, whiteouts and opaque
directories included. So a snapshot costs the disk of what the environment
changed, starts environments with the one-lower-layer overlay every template
uses, and does not depend on its source template, which may be deleted.
Replaced files are unlinked before they are copied, never written through a
hard link. ``workspace`` holds the environment's /workspace when asked.

Every function here blocks: run them in a thread.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

_OPAQUE = "trusted.overlay.opaque"


def link_tree(source: Path, target: Path) -> None:
    """``target`` as a copy of ``source`` whose regular files are hard links."""
    shutil.copytree(source, target, symlinks=True, copy_function=os.link)
    _copy_owners(source, target)


def _copy_owners(source: Path, target: Path) -> None:
    for directory, dirnames, filenames in os.walk(source):
        relative = Path(directory).relative_to(source)
        for name in (".", *dirnames, *filenames):
            info = os.lstat(Path(directory) / name)
            os.chown(target / relative / name, info.st_uid, info.st_gid, follow_symlinks=False)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _is_whiteout(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, _OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def apply_layer(upper: Path, root: Path) -> None:
    """Applies an overlayfs upper layer to ``root``: whiteouts delete, opaque directories
    replace, everything else replaces what was there (unlinked first)."""
    for directory, dirnames, filenames in os.walk(upper):
        relative = Path(directory).relative_to(upper)
        target_dir = root / relative
        if relative != Path(".") and _opaque(Path(directory)):
            _remove(target_dir)
            target_dir.mkdir()
        for name in [*dirnames, *filenames]:
            source = Path(directory) / name
            target = target_dir / name
            info = os.lstat(source)
            if _is_whiteout(info):
                _remove(target)
                continue
            if stat.S_ISDIR(info.st_mode):
                if target.is_symlink() or (target.exists() and not target.is_dir()):
                    _remove(target)
                target.mkdir(exist_ok=True)
            else:
                _remove(target)
                if stat.S_ISLNK(info.st_mode):
                    os.symlink(os.readlink(source), target)
                elif stat.S_ISREG(info.st_mode):
                    shutil.copyfile(source, target)
                else:
                    continue  # devices, fifos and sockets are not carried
            os.chown(target, info.st_uid, info.st_gid, follow_symlinks=False)
            if not stat.S_ISLNK(info.st_mode):
                os.chmod(target, stat.S_IMODE(info.st_mode))


def copy_workspace(source: Path, target: Path) -> None:
    """The workspace's files (regular files, directories, symlinks) under ``target``."""
    shutil.copytree(source, target, symlinks=True, ignore=_special_files)


def _special_files(directory: str, names: list[str]) -> set[str]:
    skipped = set()
    for name in names:
        mode = os.lstat(os.path.join(directory, name)).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            skipped.add(name)
        if name == "lost+found":
            skipped.add(name)
    return skipped


def workspace_files(workspace: Path, limit_bytes: int) -> list[tuple[str, bytes, int]]:
    """A snapshot's workspace files as (relative path, content, mode), at most
    ``limit_bytes`` together; ValueError beyond."""
    files: list[tuple[str, bytes, int]] = []
    total = 0
    for directory, _, filenames in os.walk(workspace):
        for name in sorted(filenames):
            path = Path(directory) / name
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                continue
            total += info.st_size
            if total > limit_bytes:
                raise ValueError(f"the snapshot's workspace holds more than {limit_bytes} bytes")
            relative = str(path.relative_to(workspace))
            files.append((relative, path.read_bytes(), stat.S_IMODE(info.st_mode)))
    return files
