"""Workspace file systems made ahead, so that a create does not wait for ``mkfs.ext4``.

With the loop disk quota, making an environment's file system (a sparse
image, ``mkfs.ext4``, a loop mount) is the longest step of a create. The pool
keeps a few of them made and mounted ahead, for the disk sizes the operator
names (``workspace_pool_disk_bytes``, by default the default size): a create
of such a size adopts one (:meth:`.Workspace.create` with ``ready``: the image
renamed, the mount moved, then laid out and chowned exactly as a file system
made on demand), and other sizes are made on demand as before. A file system
is handed out once and never comes back: the environment's end destroys it.
The pool refills in the background once the create that took one is done,
one file system at a time, and is destroyed on stop; what a crash left (``pool-<orchestrator>-…``
images in the workspace root) is removed by the start-up sweep.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from pathlib import Path

from sandbox_sdk.server.orchestrator.sandbox.workspace import (
    Workspace,
    WorkspaceLayout,
    destroy_layout,
)

log = logging.getLogger(__name__)

_PREFIX = "pool-"


class WorkspacePool:
    """At most ``depth`` ready file systems per size in ``sizes``; see the module docstring."""

    def __init__(
        self,
        workspace_root: Path,
        mount_root: Path | None,
        orchestrator_id: str,
        sizes: Sequence[int],
        depth: int,
    ) -> None:
        self._workspace_root = workspace_root
        self._mount_root = mount_root
        self._prefix = f"{_PREFIX}{orchestrator_id}-"
        self._depth = depth
        self._ready: dict[int, list[WorkspaceLayout]] = {size: [] for size in sizes}
        self._refill: asyncio.Task[None] | None = None
        self._closed = depth == 0 or not sizes

    def _layout(self, name: str) -> WorkspaceLayout:
        return WorkspaceLayout.for_environment(self._workspace_root, self._mount_root, name)

    def start(self) -> None:
        """Starts filling the pool in the background."""
        self._schedule_refill()

    def take(self, quota_bytes: int) -> WorkspaceLayout | None:
        """A ready file system of ``quota_bytes`` (the caller's from now on, to adopt or
        destroy), or None when there is none of that size; :meth:`refill` makes up for it."""
        ready = self._ready.get(quota_bytes)
        if self._closed or not ready:
            return None
        return ready.pop(0)

    def refill(self) -> None:
        """Makes up for the file systems taken, in the background."""
        self._schedule_refill()

    def ready_count(self) -> int:
        """How many file systems are ready now, all sizes together."""
        return sum(map(len, self._ready.values()))

    def _schedule_refill(self) -> None:
        if self._closed or (self._refill is not None and not self._refill.done()):
            return
        self._refill = asyncio.create_task(self._fill(), name="workspace-pool-refill")

    async def _fill(self) -> None:
        while not self._closed:
            size = next((s for s, ready in self._ready.items() if len(ready) < self._depth), None)
            if size is None:
                return
            layout = self._layout(f"{self._prefix}{secrets.token_hex(8)}")
            try:
                await Workspace.make_ready(layout, quota_bytes=size)
            except Exception as error:
                log.warning(
                    "making a workspace file system ahead failed (%s); creates make theirs", error
                )
                return
            if self._closed:
                await destroy_layout(layout)
                return
            self._ready[size].append(layout)

    async def close(self) -> None:
        """Stops refilling (waiting for a file system in the making) and destroys the
        ready ones."""
        self._closed = True
        if self._refill is not None:
            await asyncio.gather(self._refill, return_exceptions=True)
        ready = [layout for layouts in self._ready.values() for layout in layouts]
        for layouts in self._ready.values():
            layouts.clear()
        await asyncio.gather(*(destroy_layout(layout) for layout in ready))

    async def sweep(self) -> None:
        """Removes the pool's file systems a previous run of this orchestrator left
        (named ``pool-<orchestrator id>-…`` in this workspace root)."""
        if not self._workspace_root.is_dir():
            return
        names = {
            entry.name.removesuffix(".img")
            for entry in self._workspace_root.iterdir()
            if entry.name.startswith(self._prefix)
        }
        for name in sorted(names):
            log.warning("removing workspace file system %s left made ahead by a previous run", name)
            await destroy_layout(self._layout(name))
