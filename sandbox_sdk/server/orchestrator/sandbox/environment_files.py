"""The complete file calls of running environments: remove, rename, make a directory,
stat, and a directory down or up as a tar stream.

The work itself is in :mod:`.file_operations` and :mod:`.directory_archives`
and runs on worker threads; this module finds the environment, keeps it from
idling out, and turns what those raise into the statuses the RPCs promise.
An upload's unpacking reads from the client as the bytes arrive, so it holds
a thread for as long as the client takes: those threads are a small pool of
their own (:data:`MAX_CONCURRENT_UPLOADS`), never the event loop's default
executor that every other file call shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.orchestrator.sandbox import directory_archives, file_operations
from sandbox_sdk.server.orchestrator.sandbox.activity import Activity
from sandbox_sdk.server.orchestrator.sandbox.directory_archives import (
    ArchiveMemberError,
    InvalidArchive,
    Unpacked,
)
from sandbox_sdk.server.orchestrator.sandbox.environment_record import FileEntry
from sandbox_sdk.server.orchestrator.sandbox.environments import LiveEnvironments
from sandbox_sdk.server.orchestrator.sandbox.file_operations import (
    DestinationPathError,
    DirectoryNotEmpty,
    MissingParent,
    WorkspaceConflict,
)
from sandbox_sdk.server.orchestrator.sandbox.statuses import file_errors
from sandbox_sdk.server.orchestrator.sandbox.workspace import (
    Workspace,
    WorkspacePathError,
    split_path,
)
from sandbox_sdk.server.status import ServiceError, invalid_argument

MAX_CONCURRENT_UPLOADS = 8
# Bytes received but not yet unpacked, per upload, before the client is slowed down.
_UPLOAD_BUFFER_BYTES = 4 << 20
# After a refused upload, what is read and dropped before answering (see _drain).
_DRAIN_BYTES = 64 << 20


class EnvironmentFiles:
    """Remove, rename, make directory, stat, download and upload in running environments."""

    def __init__(self, environments: LiveEnvironments, activity: Activity) -> None:
        self._environments = environments
        self._activity = activity
        self._uploads = ThreadPoolExecutor(MAX_CONCURRENT_UPLOADS, thread_name_prefix="upload")

    def _workspace(self, tenant: str, environment_id: str) -> Workspace:
        _, runtime = self._environments.running(tenant, environment_id)
        self._activity.touch(environment_id)
        return runtime.files()

    @contextlib.contextmanager
    def _errors(self, field: str, path: str, workspace: Workspace) -> Iterator[None]:
        with file_errors(field, path, workspace.quota_bytes, self._environments.workspace_root):
            try:
                yield
            except WorkspaceConflict as error:
                raise ServiceError(
                    grpc.StatusCode.ALREADY_EXISTS, ErrorReason.FILE_EXISTS, str(error)
                ) from None
            except DirectoryNotEmpty as error:
                raise ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.DIRECTORY_NOT_EMPTY, str(error)
                ) from None
            except MissingParent as error:
                raise ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION, ErrorReason.FILE_NOT_FOUND, str(error)
                ) from None

    async def remove(self, tenant: str, environment_id: str, path: str, *, recursive: bool) -> bool:
        """Removes a file, symlink or (empty, or with ``recursive`` any) directory;
        whether something was there."""
        workspace = self._workspace(tenant, environment_id)
        with self._errors("path", path, workspace):
            parts = split_path(path)
            return await asyncio.to_thread(
                file_operations.remove, workspace, parts, recursive=recursive
            )

    async def rename(
        self, tenant: str, environment_id: str, source: str, destination: str, *, overwrite: bool
    ) -> FileEntry:
        """Moves an entry inside the workspace; returns it at its new path."""
        workspace = self._workspace(tenant, environment_id)
        try:
            destination_parts = split_path(destination)
        except WorkspacePathError as error:
            raise invalid_argument([("destination_path", f"'{destination}' {error}")]) from None
        try:
            with self._errors("source_path", source, workspace):
                source_parts = split_path(source)
                return await asyncio.to_thread(
                    file_operations.rename,
                    workspace,
                    source_parts,
                    destination_parts,
                    overwrite=overwrite,
                )
        except DestinationPathError as error:
            raise invalid_argument([("destination_path", f"'{destination}' {error}")]) from None

    async def make_directory(
        self, tenant: str, environment_id: str, path: str, *, parents: bool, mode: int
    ) -> FileEntry:
        """Makes a directory (an existing one is returned)."""
        workspace = self._workspace(tenant, environment_id)
        with self._errors("path", path, workspace):
            parts = split_path(path)
            return await asyncio.to_thread(
                file_operations.make_directory, workspace, parts, parents=parents, mode=mode
            )

    async def stat(self, tenant: str, environment_id: str, path: str) -> FileEntry | None:
        """The entry's metadata (a symlink's own), or None when there is none; the
        empty path is the workspace's root."""
        workspace = self._workspace(tenant, environment_id)
        with self._errors("path", path, workspace):
            parts = split_path(path, allow_root=True)
            return await asyncio.to_thread(file_operations.stat_entry, workspace, parts)

    async def download(
        self, tenant: str, environment_id: str, path: str
    ) -> AsyncGenerator[bytes, None]:
        """The directory (the empty path: the workspace) as tar chunks, each made on
        a worker thread."""
        workspace = self._workspace(tenant, environment_id)
        with self._errors("path", path, workspace):
            parts = split_path(path, allow_root=True)
            entry = await asyncio.to_thread(file_operations.stat_entry, workspace, parts)
            if entry is None:
                raise FileNotFoundError(path)
            if entry.is_symlink:
                raise WorkspacePathError("is a symlink; file calls do not follow symlinks")
            if not entry.is_dir:
                raise WorkspacePathError("is not a directory; read a file with ReadFile")
            chunks = directory_archives.tar_chunks(workspace, parts)
            try:
                while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                    self._activity.touch(environment_id)
                    yield chunk
            finally:
                await asyncio.to_thread(chunks.close)

    async def upload(
        self, tenant: str, environment_id: str, path: str, chunks: AsyncIterable[bytes]
    ) -> Unpacked:
        """Unpacks the tar stream ``chunks`` into a directory (the empty path: the
        workspace), made when missing: all of it or nothing."""
        workspace = self._workspace(tenant, environment_id)
        loop = asyncio.get_running_loop()
        pipe = _ChunkPipe(loop, _UPLOAD_BUFFER_BYTES)
        with self._errors("path", path, workspace), _archive_errors():
            parts = split_path(path, allow_root=True)
            unpacking = loop.run_in_executor(
                self._uploads, directory_archives.unpack, workspace, parts, pipe
            )
            # Done early (the archive's end marker came first, or it failed): stop sending.
            unpacking.add_done_callback(lambda _: pipe.abandon())
            try:
                async for chunk in chunks:
                    if unpacking.done() or not await pipe.send(chunk):
                        # It failed (or finished early); its error says why.
                        await _drain(chunks, _DRAIN_BYTES)
                        break
                    self._activity.touch(environment_id)
                pipe.end()
                return await asyncio.shield(unpacking)
            finally:
                pipe.abandon()  # a cancelled call must not leave the thread waiting

    def close(self) -> None:
        """Stops the upload threads (each ends once its pipe is abandoned)."""
        self._uploads.shutdown(wait=False, cancel_futures=True)


async def _drain(chunks: AsyncIterable[bytes], limit: int) -> None:
    """Reads and drops the rest of an upload, up to ``limit`` bytes.

    Answering while the client is still sending races its writes: a grpc.aio client
    whose write fails before the answer arrives reports INTERNAL ("Internal error
    from Core") instead of the refusal. Reading to the end of the stream first means
    the client has stopped writing when the answer comes. An upload longer than
    ``limit`` is answered at once: the client learns the refusal or, rarely, a
    generic error, but does not hold the call open by sending more.
    """
    dropped = 0
    async for chunk in chunks:
        dropped += len(chunk)
        if dropped > limit:
            return


@contextlib.contextmanager
def _archive_errors() -> Iterator[None]:
    try:
        yield
    except ArchiveMemberError as error:
        raise invalid_argument([("chunk", str(error))]) from None
    except InvalidArchive as error:
        raise invalid_argument([("chunk", f"the upload {error}")]) from None


class _ChunkPipe:
    """Bytes handed from the event loop to one unpacking thread.

    The thread's ``read`` blocks until bytes or the end arrive; the loop's
    :meth:`send` waits (without blocking the loop) while more than
    ``capacity`` bytes are buffered, which slows a client that sends faster
    than the disk takes it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self._loop = loop
        self._capacity = capacity
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._ended = False
        self._abandoned = False
        self._condition = threading.Condition()
        self._room = asyncio.Event()

    async def send(self, chunk: bytes) -> bool:
        """Queues ``chunk``; False when the reader is gone."""
        while True:
            with self._condition:
                if self._abandoned:
                    return False
                if self._buffered < self._capacity:
                    self._chunks.append(chunk)
                    self._buffered += len(chunk)
                    self._condition.notify()
                    return True
                self._room.clear()
            await self._room.wait()

    def end(self) -> None:
        """No more chunks: the reader gets the end of the stream."""
        with self._condition:
            self._ended = True
            self._condition.notify()

    def abandon(self) -> None:
        """The call is over: the reader fails at its next read, senders stop."""
        with self._condition:
            self._abandoned = True
            self._condition.notify()
        self._room.set()

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (on the unpacking thread); empty at the end."""
        with self._condition:
            while not self._chunks and not self._ended:
                if self._abandoned:
                    raise InvalidArchive("ended before the client finished sending it")
                self._condition.wait()
            if not self._chunks:
                return b""
            chunk = self._chunks.popleft()
            if 0 <= size < len(chunk):
                chunk, rest = chunk[:size], chunk[size:]
                self._chunks.appendleft(rest)
            self._buffered -= len(chunk)
        self._loop.call_soon_threadsafe(self._room.set)
        return chunk
