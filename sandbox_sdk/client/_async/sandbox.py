"""A handle on one environment."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import IO, Any

from sandbox_sdk.api.v1 import environment_pb2, requests_pb2
from sandbox_sdk.client import archives
from sandbox_sdk.client import request_messages as messages
from sandbox_sdk.client._async import glue
from sandbox_sdk.client._async.experiment import AsyncExperiment
from sandbox_sdk.client._async.port_forward import AsyncPortForward
from sandbox_sdk.client._async.process import AsyncProcess
from sandbox_sdk.client._async.streams import AsyncExecStream, AsyncServerStream
from sandbox_sdk.client._async.template import AsyncTemplate
from sandbox_sdk.client._async.transport import AsyncTransport
from sandbox_sdk.client.process_requests import port_number, start_process_request
from sandbox_sdk.client.retry import RetryPolicy
from sandbox_sdk.client.stream_state import usage_from_response
from sandbox_sdk.errors import NotFoundError
from sandbox_sdk.models.environment import EnvironmentInfo, EnvironmentState, ResourceLimits
from sandbox_sdk.models.execution import ExecResult
from sandbox_sdk.models.experiment import ExperimentInfo, ExperimentState
from sandbox_sdk.models.files import FileInfo, UploadSummary
from sandbox_sdk.models.usage import ResourceUsage, UsageReport
from sandbox_sdk.utils.units import DurationLike, to_duration_pb

# Extra time the exec call gets beyond the command's own limit, to report the exit.
EXEC_DEADLINE_MARGIN = 30.0


def _chunk_of(message: requests_pb2.DownloadDirectoryResponse) -> bytes:
    chunk: bytes = message.chunk
    return chunk


class AsyncSandbox:
    """An environment; leaving a ``with`` block on it deletes it.

    ``info`` is the last snapshot; :meth:`refresh` fetches a new one.
    """

    def __init__(self, transport: AsyncTransport, environment: environment_pb2.Environment) -> None:
        self._transport = transport
        self._set(environment)

    def _set(self, environment: environment_pb2.Environment) -> None:
        # Converted on first use of ``info``: keeps the call path as cheap as the raw stub.
        self._proto = environment
        self._info: EnvironmentInfo | None = None

    @property
    def info(self) -> EnvironmentInfo:
        """The last snapshot of the environment."""
        if self._info is None:
            self._info = EnvironmentInfo.from_proto(self._proto)
        return self._info

    @property
    def id(self) -> str:
        """The environment's id."""
        return self._proto.id

    @property
    def state(self) -> EnvironmentState:
        """The state in the last snapshot."""
        return self.info.state

    async def refresh(
        self, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> EnvironmentInfo:
        """Fetches the latest snapshot into ``info`` and returns it."""
        request = requests_pb2.GetEnvironmentRequest(environment_id=self.id)
        return await self._snapshot_from("GetEnvironment", request, timeout, retry)

    async def update(
        self,
        *,
        labels: Mapping[str, str] | None = None,
        ttl: DurationLike | None = None,
        idle_timeout: DurationLike | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> EnvironmentInfo:
        """Replaces the labels and/or changes the ttl or idle timeout."""
        request = messages.update_environment_request(
            self.id, labels=labels, ttl=ttl, idle_timeout=idle_timeout
        )
        return await self._snapshot_from("UpdateEnvironment", request, timeout, retry)

    async def delete(
        self, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> EnvironmentInfo:
        """Kills the environment's processes and removes its workspace (idempotent)."""
        request = requests_pb2.DeleteEnvironmentRequest(environment_id=self.id)
        return await self._snapshot_from("DeleteEnvironment", request, timeout, retry)

    async def _snapshot_from(
        self, method: str, request: Any, timeout: float | None, retry: RetryPolicy | None
    ) -> EnvironmentInfo:
        """Calls a method answering with the environment, and keeps that snapshot."""
        response = await self._transport.call(method, request, timeout=timeout, retry=retry)
        self._set(response.environment)
        return self.info

    async def exec(
        self,
        cmd: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        timeout: DurationLike | None = None,
        check: bool = False,
    ) -> ExecResult:
        """Runs a command (a list, or a string run by ``/bin/sh -c``) and waits for it.

        ``timeout`` is the command's wall-clock limit (default: the environment's).
        With ``check`` a non-zero exit raises :class:`CommandFailedError`.
        """
        result = await self.exec_stream(
            cmd, cwd=cwd, env=env, stdin=stdin, timeout=timeout
        ).result()
        return result.check() if check else result

    def exec_stream(
        self,
        cmd: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        timeout: DurationLike | None = None,
    ) -> AsyncExecStream:
        """Runs a command, yielding :class:`OutputChunk` s as they are written.

        After iteration, ``stream.result()`` is the :class:`ExecResult`.
        """
        request = messages.exec_request(
            self.id, cmd, cwd=cwd, env=env, stdin=stdin, timeout=timeout
        )
        limit = messages.seconds(timeout)
        deadline = limit + EXEC_DEADLINE_MARGIN if limit else None
        return AsyncExecStream(self._transport, request, timeout=deadline)

    async def start(
        self,
        cmd: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bool = False,
        pty: tuple[int, int] | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> AsyncProcess:
        """Starts a command (a list, or a string run by ``/bin/sh -c``) in the background.

        It runs until it exits, is signalled or the environment ends; read its
        output with ``process.output()`` or ``process.stdout_lines()``, end it
        with ``process.kill()``, collect its result with ``process.wait()``.
        ``stdin=True`` keeps its stdin open for ``process.write()``;
        ``pty=(rows, cols)`` runs it under a terminal of that size (its output
        is then the terminal's raw bytes, all on stdout). A retried start
        starts it once. A program that cannot run gives a process in state
        FAILED_TO_START with ``info.start_error``.
        """
        request = start_process_request(self.id, cmd, cwd=cwd, env=env, stdin=stdin, pty=pty)
        response = await self._transport.call("StartProcess", request, timeout=timeout, retry=retry)
        return AsyncProcess(self._transport, response.process)

    async def process(self, process_id: str, *, timeout: float | None = None) -> AsyncProcess:
        """Attaches to a process of this environment started by any client
        (:class:`NotFoundError` if there is none with this id)."""
        request = requests_pb2.GetProcessRequest(environment_id=self.id, process_id=process_id)
        response = await self._transport.call("GetProcess", request, timeout=timeout)
        return AsyncProcess(self._transport, response.process)

    async def processes(
        self, *, include_finished: bool = False, timeout: float | None = None
    ) -> list[AsyncProcess]:
        """The environment's processes, oldest first: running ones, and with
        ``include_finished`` those that have ended too."""
        request = requests_pb2.ListProcessesRequest(
            environment_id=self.id, include_finished=include_finished
        )
        found: list[AsyncProcess] = []
        async for page in self._transport.pages("ListProcesses", request, timeout=timeout):
            found.extend(AsyncProcess(self._transport, process) for process in page.processes)
        return found

    def forward(self, remote_port: int, local_port: int = 0) -> AsyncPortForward:
        """Forwards a local TCP port to ``remote_port`` on 127.0.0.1 inside the environment,
        as ``kubectl port-forward`` does; use it as a context manager that yields the
        local port::

            async with sandbox.forward(8000) as local_port:
                ...  # connect to 127.0.0.1:local_port

        It listens on 127.0.0.1 only (``local_port=0``: any free port) and carries each
        connection over its own authenticated ``ForwardPort`` stream. Leaving the
        block stops the listener and closes every connection.
        """
        return AsyncPortForward(
            self._transport,
            self.id,
            port_number("remote_port", remote_port),
            port_number("local_port", local_port, allow_zero=True),
        )

    async def write_file(
        self,
        path: str,
        content: bytes | str,
        *,
        mode: int = 0o644,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> FileInfo:
        """Writes ``content`` to ``path`` (relative to the workspace), replacing the file.

        Retried like other calls safe to repeat; pass ``retry=RetryPolicy.disabled()``
        to write at most once (see :mod:`sandbox_sdk.client.retry`).
        """
        data = content.encode() if isinstance(content, str) else content
        request = requests_pb2.WriteFileRequest(
            environment_id=self.id,
            file=environment_pb2.FileContent(path=path, content=data, mode=mode),
        )
        response = await self._transport.call("WriteFile", request, timeout=timeout, retry=retry)
        return FileInfo.from_proto(response.file)

    async def read_file(self, path: str, *, timeout: float | None = None) -> bytes:
        """The bytes of the workspace file at ``path``."""
        request = requests_pb2.ReadFileRequest(environment_id=self.id, path=path)
        response = await self._transport.call("ReadFile", request, timeout=timeout)
        content: bytes = response.content
        return content

    async def read_text(self, path: str, *, encoding: str = "utf-8") -> str:
        """The workspace file at ``path`` decoded as text."""
        return (await self.read_file(path)).decode(encoding)

    async def list_files(self, path: str = "", *, page_size: int = 0) -> AsyncIterator[FileInfo]:
        """The entries of a workspace directory, sorted by path; pages transparently."""
        request = requests_pb2.ListFilesRequest(
            environment_id=self.id, path=path, page_size=page_size
        )
        async for page in self._transport.pages("ListFiles", request):
            for item in page.files:
                yield FileInfo.from_proto(item)

    async def stat(self, path: str, *, timeout: float | None = None) -> FileInfo:
        """Metadata of the workspace file or directory at ``path`` (:class:`NotFoundError`
        if there is none; :meth:`exists` asks without raising)."""
        response = await self._stat(path, timeout)
        if not response.exists:
            raise NotFoundError(
                f"{path!r} does not exist in the workspace of {self.id}; list_files() shows "
                "what does",
                reason="FILE_NOT_FOUND",
                metadata={"environment_id": self.id, "path": path},
            )
        return FileInfo.from_proto(response.file)

    async def exists(self, path: str, *, timeout: float | None = None) -> bool:
        """Whether a file or directory exists at ``path`` in the workspace."""
        exists: bool = (await self._stat(path, timeout)).exists
        return exists

    async def _stat(self, path: str, timeout: float | None) -> Any:
        request = requests_pb2.StatFileRequest(environment_id=self.id, path=path)
        return await self._transport.call("StatFile", request, timeout=timeout)

    async def remove(
        self, path: str, *, recursive: bool = False, timeout: float | None = None
    ) -> bool:
        """Removes a workspace file (a directory needs ``recursive=True``); whether there was one.

        Removing what does not exist succeeds and returns ``False``.
        """
        request = requests_pb2.RemoveFileRequest(
            environment_id=self.id, path=path, recursive=recursive
        )
        response = await self._transport.call("RemoveFile", request, timeout=timeout)
        removed: bool = response.removed
        return removed

    async def rename(
        self,
        path: str,
        new_path: str,
        *,
        overwrite: bool = False,
        timeout: float | None = None,
    ) -> FileInfo:
        """Moves a workspace file or directory to ``new_path`` and returns it there.

        An existing ``new_path`` is :class:`AlreadyExistsError` unless ``overwrite``.
        Not retried by itself: a repeat would find ``path`` gone.
        """
        request = requests_pb2.RenameFileRequest(
            environment_id=self.id,
            source_path=path,
            destination_path=new_path,
            overwrite=overwrite,
        )
        response = await self._transport.call("RenameFile", request, timeout=timeout)
        return FileInfo.from_proto(response.file)

    async def make_dir(
        self, path: str, *, parents: bool = True, mode: int = 0o755, timeout: float | None = None
    ) -> FileInfo:
        """Makes a workspace directory (and its missing parents, with ``parents``); an
        existing one is fine."""
        request = requests_pb2.MakeDirectoryRequest(
            environment_id=self.id, path=path, parents=parents, mode=mode
        )
        response = await self._transport.call("MakeDirectory", request, timeout=timeout)
        return FileInfo.from_proto(response.file)

    async def upload_dir(
        self,
        local_dir: str | os.PathLike[str],
        remote_path: str = "",
        *,
        timeout: float | None = None,
    ) -> UploadSummary:
        """Copies a local directory's contents into the workspace directory ``remote_path``
        (created if missing), as a tar stream; symbolic links stay links.

        The tar is built off the event loop and sent in chunks. Not retried by itself:
        after a failure part of the tree may be in place, so upload again.
        """
        archive = await glue.off_loop(archives.pack_directory, local_dir)
        try:
            response = await self._transport.send_stream(
                "UploadDirectory", self._upload_requests(archive, remote_path), timeout=timeout
            )
        finally:
            archive.close()
        return UploadSummary(response.files_written, response.bytes_written)

    async def _upload_requests(
        self, archive: IO[bytes], remote_path: str
    ) -> AsyncIterator[requests_pb2.UploadDirectoryRequest]:
        yield requests_pb2.UploadDirectoryRequest(environment_id=self.id, path=remote_path)
        while chunk := await glue.off_loop(archives.read_chunk, archive):
            yield requests_pb2.UploadDirectoryRequest(chunk=chunk)

    async def download_dir(
        self,
        remote_path: str,
        local_dir: str | os.PathLike[str],
        *,
        timeout: float | None = None,
    ) -> list[str]:
        """Copies the workspace directory ``remote_path`` (``""``: the whole workspace) into
        ``local_dir`` (created if missing); returns the names extracted.

        The archive the server sends is checked like any untrusted tar: an
        absolute name, ``..``, a link leaving ``local_dir`` or a device file
        raises :class:`~sandbox_sdk.client.archives.ArchiveError`.
        """
        request = requests_pb2.DownloadDirectoryRequest(environment_id=self.id, path=remote_path)
        archive = archives.spool()
        try:
            stream = AsyncServerStream(
                self._transport,
                self._transport.rpcs["DownloadDirectory"],
                lambda: request,
                _chunk_of,
                timeout=timeout,
            )
            async with stream:
                async for chunk in stream:
                    await glue.off_loop(archives.write_chunk, archive, chunk)
        except BaseException:
            archive.close()
            raise
        return await glue.off_loop(archives.extract_archive, archive, local_dir)

    async def snapshot(
        self,
        *,
        name: str = "",
        include_workspace: bool = False,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> AsyncTemplate:
        """Turns what this environment changed in its root file system (and its workspace,
        with ``include_workspace``) into a new template; its processes keep running.

        Start environments from it with ``create_environment(template=...)``;
        call ``wait()`` on it first if it is still BUILDING. Snapshots count
        against your tenant's template disk quota. A retried snapshot returns
        the first template, never a second one.
        """
        request = requests_pb2.SnapshotEnvironmentRequest(
            environment_id=self.id,
            display_name=name,
            include_workspace=include_workspace,
            request_id=messages.new_request_id(),
        )
        response = await self._transport.call(
            "SnapshotEnvironment", request, timeout=timeout, retry=retry
        )
        return AsyncTemplate(self._transport, response.template)

    async def usage(self, *, timeout: float | None = None) -> UsageReport:
        """The latest resource usage sample next to the limits."""
        request = requests_pb2.GetEnvironmentUsageRequest(environment_id=self.id)
        response = await self._transport.call("GetEnvironmentUsage", request, timeout=timeout)
        return UsageReport(
            usage=ResourceUsage.from_proto(response.usage),
            limits=ResourceLimits.from_proto(response.limits),
        )

    def stream_usage(
        self, *, interval: DurationLike = 1.0, timeout: float | None = None
    ) -> AsyncServerStream[ResourceUsage]:
        """Usage samples every ``interval`` until the environment ends (reconnects if broken)."""
        request = requests_pb2.StreamEnvironmentUsageRequest(
            environment_id=self.id, interval=to_duration_pb(messages.seconds(interval) or 1.0)
        )
        return AsyncServerStream(
            self._transport,
            self._transport.rpcs["StreamEnvironmentUsage"],
            lambda: request,
            usage_from_response,
            timeout=timeout,
            resumable=True,
        )

    async def run_experiment(
        self,
        *,
        model: str,
        prompt: str | None = None,
        prompts: Iterable[str] | None = None,
        inputs: Iterable[messages.InputLike] | None = None,
        dataset_path: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        scorers: Iterable[messages.ScorerLike] | None = None,
        repeats: int | None = None,
        system_prompt: str | None = None,
        timeout: DurationLike | None = None,
        priority: int | None = None,
        labels: Mapping[str, str] | None = None,
        fail_on_scorer_error: bool = False,
        sandbox_tool: messages.SandboxToolLike | None = None,
    ) -> AsyncExperiment:
        """Queues an experiment in this environment and returns its handle at once.

        Give exactly one of ``prompt``, ``prompts``, ``inputs`` (dicts with
        ``prompt`` and ``expected``) or ``dataset_path`` (a JSONL file in the
        workspace). ``parameters`` keys temperature, top_p, max_tokens, seed and
        stop are typed; other keys go to the provider. ``timeout`` bounds the
        whole experiment on the server.

        A scorer that fails on a sample (a command that crashes, times out or
        prints no number) leaves that metric out of the sample, with the reason
        in its ``score_errors``, and the experiment goes on. With
        ``fail_on_scorer_error=True`` the experiment instead ends FAILED at the
        first such sample, with reason ``SCORER_FAILED`` and a message naming
        the scorer, the sample and the error; ``get_results()`` then raises
        :class:`~sandbox_sdk.errors.ExperimentFailedError`, and
        ``get_results(raise_on_failure=False)`` returns the samples run so far.

        ``sandbox_tool=True`` (or a mapping of ``max_turns``, ``command_timeout`` and
        ``max_output_bytes``) gives the model a tool that runs shell commands in this
        environment, in a bounded loop per sample; the calls and results are
        ``tool_call`` and ``tool_result`` events, and ``turns``, ``tool_calls`` and
        ``tool_errors`` are metrics of the results.
        """
        request = messages.create_experiment_request(
            self.id,
            model=model,
            prompt=prompt,
            prompts=prompts,
            inputs=inputs,
            dataset_path=dataset_path,
            parameters=parameters,
            scorers=scorers,
            repeats=repeats,
            system_prompt=system_prompt,
            timeout=timeout,
            priority=priority,
            labels=labels,
            fail_on_scorer_error=fail_on_scorer_error,
            sandbox_tool=sandbox_tool,
        )
        response = await self._transport.call("CreateExperiment", request)
        return AsyncExperiment(self._transport, ExperimentInfo.from_proto(response.experiment))

    async def list_experiments(
        self,
        *,
        labels: Mapping[str, str] | None = None,
        states: Iterable[ExperimentState | str] = (),
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[AsyncExperiment]:
        """This environment's experiments, newest first, fetched page by page as you iterate."""
        request = messages.list_experiments_request(
            labels=labels, environment_id=self.id, states=states, page_size=page_size
        )
        async for page in self._transport.pages("ListExperiments", request, timeout=timeout):
            for experiment in page.experiments:
                yield AsyncExperiment(self._transport, ExperimentInfo.from_proto(experiment))

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with contextlib.suppress(NotFoundError):
            await self.delete()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, state={self.info.state.value})"
