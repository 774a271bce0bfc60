"""The orchestrator's content-addressed store of built templates.

``<root>/<digest>/rootfs`` is a template's root file system and
``<root>/<digest>/template.json`` its description. A build works in
``<root>/.build-<random>`` and is renamed into place once complete, so a
template either is there whole or not at all; a failed or interrupted build
leaves nothing (leftovers of a crash are removed at start). Builds of one
digest wait on one lock: the same spec builds once. A template in use by an
environment cannot be deleted.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.orchestrator.templates.build_steps import TemplateBuilder, tree_bytes
from sandbox_sdk.server.orchestrator.templates.logged_process import BuildLog
from sandbox_sdk.server.orchestrator.templates.spec import TemplateDefaults, TemplateSpec
from sandbox_sdk.server.status import ServiceError

_DESCRIPTION = "template.json"
_BUILD_PREFIX = ".build-"
_TRASH_PREFIX = ".trash-"


class TemplateNotFound(LookupError):
    """No template with that digest is built on this orchestrator."""


class TemplateInUse(RuntimeError):
    """A template cannot be deleted while environments use it; the message names them."""


@dataclass(frozen=True)
class Template:
    """A built template: its digest, root file system, defaults and when and how big."""

    digest: str
    rootfs: Path
    defaults: TemplateDefaults
    spec_json: str
    create_time: float
    size_bytes: int
    build_seconds: float


@dataclass
class TemplateCache:
    """Built templates under ``root``; see the module docstring."""

    root: Path
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _users: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if any(char in str(self.root) for char in ",:\\"):
            # The path goes into overlayfs's mount options, where these separate fields.
            raise ValueError(f"the template directory {self.root} must not contain , : or \\")

    async def start(self) -> None:
        """Creates the store and removes what an interrupted build or delete left."""
        await asyncio.to_thread(self._sweep)

    def _sweep(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)
        for entry in self.root.iterdir():
            if entry.name.startswith((_BUILD_PREFIX, _TRASH_PREFIX)):
                shutil.rmtree(entry, ignore_errors=True)

    # --- building ----------------------------------------------------------------------

    async def build(
        self, spec: TemplateSpec, builder: TemplateBuilder, on_log: BuildLog
    ) -> Template:
        """The template of ``spec`` (validated by the caller), built unless it is already.

        Concurrent builds of one digest build once; the others wait and get it.
        Raises :class:`.TemplateBuildError` if the build fails.
        """
        digest = spec.digest
        async with self._locks.setdefault(digest, asyncio.Lock()):
            existing = await asyncio.to_thread(self._read, digest)
            if existing is not None:
                on_log(f"template {digest} is already built")
                return existing
            return await self._build(spec, digest, builder, on_log)

    async def _build(
        self, spec: TemplateSpec, digest: str, builder: TemplateBuilder, on_log: BuildLog
    ) -> Template:
        work = self.root / f"{_BUILD_PREFIX}{secrets.token_hex(8)}"
        await asyncio.to_thread(work.mkdir, 0o711)
        started = time.monotonic()
        try:
            defaults = await builder.build(spec, work, on_log)
            size = await asyncio.to_thread(tree_bytes, work / "rootfs")
            description = _describe(spec, defaults, size, time.monotonic() - started)
            await asyncio.to_thread(self._commit, work, digest, description)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, work, True))
            raise
        on_log(f"template {digest} built in {time.monotonic() - started:.1f} s")
        template = await asyncio.to_thread(self._read, digest)
        assert template is not None  # noqa: S101  (just renamed into place)
        return template

    async def add_tree(
        self,
        digest: str,
        fill: Callable[[Path], None],
        spec_json: str,
        defaults: TemplateDefaults,
    ) -> Template:
        """A template whose tree ``fill`` makes (blocking, run in a thread) in a fresh
        directory, whose ``rootfs`` it must create; committed whole, like a build."""
        async with self._locks.setdefault(digest, asyncio.Lock()):
            existing = await asyncio.to_thread(self._read, digest)
            if existing is not None:
                return existing
            work = self.root / f"{_BUILD_PREFIX}{secrets.token_hex(8)}"
            started = time.monotonic()
            try:
                await asyncio.to_thread(work.mkdir, 0o711)
                await asyncio.to_thread(fill, work)
                size = await asyncio.to_thread(tree_bytes, work)
                description = {
                    "spec": spec_json,
                    "defaults": {
                        "env": dict(defaults.env),
                        "workdir": defaults.workdir,
                        "user": defaults.user,
                        "limits": dict(defaults.limits),
                    },
                    "create_time": time.time(),
                    "size_bytes": size,
                    "build_seconds": time.monotonic() - started,
                }
                await asyncio.to_thread(self._commit, work, digest, description)
            except BaseException:
                await asyncio.shield(asyncio.to_thread(shutil.rmtree, work, True))
                raise
            template = await asyncio.to_thread(self._read, digest)
            assert template is not None  # noqa: S101  (just renamed into place)
            return template

    def _commit(self, work: Path, digest: str, description: dict[str, Any]) -> None:
        path = work / _DESCRIPTION
        path.write_text(json.dumps(description, sort_keys=True), encoding="utf-8")
        with open(path, "rb") as file:
            os.fsync(file.fileno())
        work.chmod(0o755)
        work.rename(self.root / digest)

    # --- reading -----------------------------------------------------------------------

    def _read(self, digest: str) -> Template | None:
        if not _is_digest(digest):
            return None
        directory = self.root / digest
        try:
            data: dict[str, Any] = json.loads(
                (directory / _DESCRIPTION).read_text(encoding="utf-8")
            )
        except (OSError, ValueError):
            return None
        return Template(
            digest=digest,
            rootfs=directory / "rootfs",
            defaults=TemplateDefaults(**data["defaults"]),
            spec_json=data["spec"],
            create_time=data["create_time"],
            size_bytes=data["size_bytes"],
            build_seconds=data["build_seconds"],
        )

    async def describe(self, digest: str) -> Template:
        """The built template; raises :class:`TemplateNotFound`."""
        template = await asyncio.to_thread(self._read, digest)
        if template is None:
            raise TemplateNotFound(f"no template {digest} is built on this orchestrator")
        return template

    async def list_templates(self) -> list[Template]:
        """Every built template, oldest first."""
        return await asyncio.to_thread(self._list)

    def _list(self) -> list[Template]:
        found = (self._read(entry.name) for entry in self.root.iterdir() if _is_digest(entry.name))
        return sorted((t for t in found if t is not None), key=lambda t: t.create_time)

    # --- use by environments -----------------------------------------------------------

    def acquire(self, digest: str, environment_id: str) -> Path:
        """The template's root file system, marked in use by the environment; raises
        FAILED_PRECONDITION if it is not built here. (A stat and a small read.)"""
        if not _is_digest(digest) or not (self.root / digest / _DESCRIPTION).is_file():
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                ErrorReason.INVALID_ARGUMENT,
                f"template {digest} is not built on this orchestrator; build it first",
            )
        self._users.setdefault(digest, set()).add(environment_id)
        return self.root / digest / "rootfs"

    def release(self, digest: str, environment_id: str) -> None:
        """The environment no longer uses the template (idempotent)."""
        users = self._users.get(digest)
        if users is not None:
            users.discard(environment_id)
            if not users:
                del self._users[digest]

    def users(self, digest: str) -> list[str]:
        """The environments using the template, sorted."""
        return sorted(self._users.get(digest, ()))

    async def delete(self, digest: str) -> None:
        """Deletes the template; raises :class:`TemplateInUse` naming the environments
        that use it, or :class:`TemplateNotFound`."""
        async with self._locks.setdefault(digest, asyncio.Lock()):
            users = self.users(digest)
            if users:
                raise TemplateInUse(
                    f"template {digest} is used by environment(s) {', '.join(users)}; "
                    "delete them first"
                )
            await self.describe(digest)
            trash = self.root / f"{_TRASH_PREFIX}{secrets.token_hex(8)}"
            await asyncio.to_thread((self.root / digest).rename, trash)
            await asyncio.to_thread(shutil.rmtree, trash, True)


def _is_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _describe(
    spec: TemplateSpec, defaults: TemplateDefaults, size: int, seconds: float
) -> dict[str, Any]:
    return {
        "spec": spec.canonical_json(),
        "defaults": {
            "env": dict(defaults.env),
            "workdir": defaults.workdir,
            "user": defaults.user,
            "limits": dict(defaults.limits),
        },
        "create_time": time.time(),
        "size_bytes": size,
        "build_seconds": seconds,
    }
