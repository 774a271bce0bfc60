"""A root file system from an OCI image archive (``docker save`` or an OCI layout tarball).

The archive is copied into the build's own directory (its sha256 checked on
the way), then ``skopeo copy`` turns it into an OCI layout and ``umoci unpack
--rootless`` applies its layers, whiteouts included. Both run as the
unprivileged build uid, never as root: the archive is hostile input. The
image's config (Env, WorkingDir, User) becomes the template's defaults.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sandbox_sdk.server.orchestrator.sandbox.host_env import host_process_env
from sandbox_sdk.server.orchestrator.templates.logged_process import (
    BuildLog,
    TemplateBuildError,
    run_logged,
)
from sandbox_sdk.server.orchestrator.templates.spec import OciArchiveBase, TemplateDefaults

_TAG = "template"
_MAX_ENV = 256
_MAX_CONFIG_BYTES = 1 << 20


def copy_archive(base: OciArchiveBase, allowed_dirs: Sequence[Path], target: Path) -> None:
    """Copies the archive to ``target`` checking its sha256 (blocking: run it in a thread).

    The archive must be a regular file directly under one of ``allowed_dirs``'
    trees, reached without symlinks, so a spec cannot read the host's files.
    """
    source = Path(base.path)
    if not any(source.is_relative_to(directory) for directory in allowed_dirs):
        raise TemplateBuildError(
            f"{base.path} is not in a directory this orchestrator imports archives from"
        )
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(os.path.realpath(source), flags)
    except OSError as error:
        raise TemplateBuildError(f"cannot open {base.path}: {error.strerror}") from error
    if Path(os.path.realpath(source)) != source:
        os.close(fd)
        raise TemplateBuildError(f"{base.path} goes through a symlink; give its real path")
    digest = hashlib.sha256()
    with open(fd, "rb") as archive, open(target, "xb") as copy:
        if not stat.S_ISREG(os.fstat(archive.fileno()).st_mode):
            raise TemplateBuildError(f"{base.path} is not a regular file")
        while chunk := archive.read(1 << 20):
            digest.update(chunk)
            copy.write(chunk)
    if digest.hexdigest() != base.sha256:
        raise TemplateBuildError(
            f"{base.path} has sha256 {digest.hexdigest()}, not the {base.sha256} the spec names"
        )


def archive_source(archive: Path, work: Path) -> str:
    """skopeo's source for the archive (blocking: run it in a thread).

    A ``docker save`` tarball is read as ``docker-archive``; an OCI layout
    tarball is unpacked here into ``work/source`` first, with tarfile's
    ``data`` filter (no links or paths out of it, no owners or special
    bits), because skopeo's own unpacking chowns, which the build uid may not.
    """
    transport = _archive_transport(archive)
    if transport == "docker-archive":
        return f"docker-archive:{archive}"
    source = work / "source"
    with tarfile.open(archive) as tar:
        tar.extractall(source, filter="data")
    return f"oci:{source}"


def _archive_transport(archive: Path) -> str:
    try:
        with tarfile.open(archive) as tar:
            names = {name.removeprefix("./") for name in tar.getnames()}
    except (tarfile.TarError, OSError) as error:
        raise TemplateBuildError(f"the archive is not a tar file: {error}") from error
    if "oci-layout" in names and "index.json" in names:
        return "oci-archive"
    if "manifest.json" in names:
        return "docker-archive"
    raise TemplateBuildError("the archive is neither an OCI layout nor a `docker save` tarball")


async def unpack_image(
    source: str,
    work: Path,
    *,
    as_build_user: Sequence[str],
    on_log: BuildLog,
) -> tuple[Path, TemplateDefaults]:
    """Unpacks the image into ``work/bundle/rootfs`` as the build uid; returns it and
    the image's defaults. ``work`` belongs to the build uid; ``as_build_user`` is the
    argv prefix switching to it."""
    env = host_process_env(TMPDIR=str(work), HOME=str(work))
    layout = f"oci:{work / 'layout'}:{_TAG}"
    await run_logged(
        [*as_build_user, "skopeo", "--insecure-policy", "--tmpdir", str(work), "copy", source,
         layout],
        env=env, on_log=on_log, what="skopeo copy (reading the image archive)",
    )  # fmt: skip
    bundle = work / "bundle"
    await run_logged(
        [*as_build_user, "umoci", "unpack", "--rootless", "--image", f"{work / 'layout'}:{_TAG}",
         str(bundle)],
        env=env, on_log=on_log, what="umoci unpack (applying the image's layers)",
    )  # fmt: skip
    return bundle / "rootfs", image_defaults(bundle / "config.json")


def image_defaults(config_path: Path) -> TemplateDefaults:
    """Env, working directory and user of the image, from umoci's runtime config."""
    try:
        if config_path.stat().st_size > _MAX_CONFIG_BYTES:
            raise TemplateBuildError("the image's config is too large")
        config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        process = config.get("process") or {}
        env = dict(item.split("=", 1) for item in process.get("env", [])[:_MAX_ENV] if "=" in item)
        user = process.get("user") or {}
        uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise TemplateBuildError(f"the image's config cannot be read: {error}") from error
    workdir = str(process.get("cwd") or "")
    return TemplateDefaults(
        env=env,
        workdir="" if workdir == "/" else workdir,
        user=f"{uid}:{gid}" if (uid, gid) != (0, 0) else "",
    )
