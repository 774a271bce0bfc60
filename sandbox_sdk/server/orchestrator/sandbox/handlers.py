"""The environment RPCs of OrchestratorService, on top of :class:`SandboxManager`.

Each method has the RPC's name and a grpc.aio servicer's signature, so the
orchestrator's servicer can delegate to it. Requests are validated and
converted here; protobuf goes no deeper.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc

from sandbox_sdk.api.v1 import orchestrator_service_pb2, requests_pb2
from sandbox_sdk.server.orchestrator.sandbox import (
    convert,
    file_requests,
    forward_requests,
    process_requests,
    validation,
)
from sandbox_sdk.server.orchestrator.sandbox.environment_record import FileWrite
from sandbox_sdk.server.orchestrator.sandbox.manager import SandboxManager
from sandbox_sdk.server.orchestrator.sandbox.tenant_usage import ExperimentCounts, TenantUsage
from sandbox_sdk.server.status import invalid_argument
from sandbox_sdk.server.tenancy import tenant_of

Context = grpc.aio.ServicerContext[Any, Any]


class EnvironmentHandlers:
    """Environment, command, file, usage and capacity RPCs."""

    def __init__(
        self, manager: SandboxManager, experiment_counts: ExperimentCounts | None = None
    ) -> None:
        """``experiment_counts`` answers GetTenantUsage's experiment counts (none: 0)."""
        self._manager = manager
        self._tenant_usage = TenantUsage(manager.live_environment_count, experiment_counts)

    async def CreateEnvironment(
        self, request: requests_pb2.CreateEnvironmentRequest, context: Context
    ) -> requests_pb2.CreateEnvironmentResponse:
        """Creates an environment; RUNNING when it returns."""
        new = validation.new_environment(request, self._manager.settings)
        environment = await self._manager.create_environment(tenant_of(context), new)
        return requests_pb2.CreateEnvironmentResponse(environment=convert.environment(environment))

    async def GetEnvironment(
        self, request: requests_pb2.GetEnvironmentRequest, context: Context
    ) -> bytes:
        """One environment, in any state: its GetEnvironmentResponse, serialized (an
        environment polled while it does not change is serialized once)."""
        environment = self._manager.get_environment(
            tenant_of(context), validation.environment_id(request.environment_id)
        )
        return convert.get_environment_response(environment)

    async def ListEnvironments(
        self, request: requests_pb2.ListEnvironmentsRequest, context: Context
    ) -> requests_pb2.ListEnvironmentsResponse:
        """A page of the tenant's environments, newest first."""
        query = validation.list_query(request)
        environments, token = self._manager.list_environments(tenant_of(context), query)
        return requests_pb2.ListEnvironmentsResponse(
            environments=[convert.environment(e) for e in environments], next_page_token=token
        )

    async def UpdateEnvironment(
        self, request: requests_pb2.UpdateEnvironmentRequest, context: Context
    ) -> requests_pb2.UpdateEnvironmentResponse:
        """Changes labels, ttl or idle timeout."""
        environment_id = validation.environment_id(request.environment_id)
        update = validation.environment_update(request, self._manager.settings)
        environment = self._manager.update_environment(tenant_of(context), environment_id, update)
        return requests_pb2.UpdateEnvironmentResponse(environment=convert.environment(environment))

    async def DeleteEnvironment(
        self, request: requests_pb2.DeleteEnvironmentRequest, context: Context
    ) -> requests_pb2.DeleteEnvironmentResponse:
        """Terminates an environment; deleting a deleted one returns it again."""
        environment = await self._manager.delete_environment(
            tenant_of(context), validation.environment_id(request.environment_id)
        )
        return requests_pb2.DeleteEnvironmentResponse(environment=convert.environment(environment))

    async def ExecCommand(
        self, request: requests_pb2.ExecCommandRequest, context: Context
    ) -> AsyncGenerator[requests_pb2.ExecCommandResponse, None]:
        """Runs a command, streaming its output as it is produced."""
        environment_id = validation.environment_id(request.environment_id)
        command = validation.command(request, self._manager.settings)
        events = self._manager.exec_command(tenant_of(context), environment_id, command)
        async with contextlib.aclosing(events):
            async for event in events:
                yield convert.exec_event(event)

    async def WriteFile(
        self, request: requests_pb2.WriteFileRequest, context: Context
    ) -> requests_pb2.WriteFileResponse:
        """Writes a workspace file."""
        environment_id = validation.environment_id(request.environment_id)
        file: FileWrite = validation.file_write(request)
        entry = await self._manager.write_file(tenant_of(context), environment_id, file)
        return requests_pb2.WriteFileResponse(file=convert.file_info(entry))

    async def ReadFile(
        self, request: requests_pb2.ReadFileRequest, context: Context
    ) -> requests_pb2.ReadFileResponse:
        """Reads a workspace file."""
        environment_id = validation.environment_id(request.environment_id)
        path = validation.file_path(request.path)
        entry, content = await self._manager.read_workspace_file(
            tenant_of(context), environment_id, path
        )
        return requests_pb2.ReadFileResponse(file=convert.file_info(entry), content=content)

    async def ListFiles(
        self, request: requests_pb2.ListFilesRequest, context: Context
    ) -> requests_pb2.ListFilesResponse:
        """A page of a workspace directory."""
        environment_id = validation.environment_id(request.environment_id)
        path, page_size = validation.directory_listing(request)
        entries, token = self._manager.list_files(
            tenant_of(context), environment_id, path, page_size, request.page_token
        )
        return requests_pb2.ListFilesResponse(
            files=[convert.file_info(e) for e in entries], next_page_token=token
        )

    async def RemoveFile(
        self, request: requests_pb2.RemoveFileRequest, context: Context
    ) -> requests_pb2.RemoveFileResponse:
        """Removes a workspace entry; a missing one is not an error."""
        environment_id = validation.environment_id(request.environment_id)
        removed = await self._manager.files.remove(
            tenant_of(context), environment_id, request.path, recursive=request.recursive
        )
        return requests_pb2.RemoveFileResponse(removed=removed)

    async def RenameFile(
        self, request: requests_pb2.RenameFileRequest, context: Context
    ) -> requests_pb2.RenameFileResponse:
        """Moves a workspace entry to another workspace path."""
        environment_id = validation.environment_id(request.environment_id)
        entry = await self._manager.files.rename(
            tenant_of(context),
            environment_id,
            request.source_path,
            request.destination_path,
            overwrite=request.overwrite,
        )
        return requests_pb2.RenameFileResponse(file=convert.file_info(entry))

    async def MakeDirectory(
        self, request: requests_pb2.MakeDirectoryRequest, context: Context
    ) -> requests_pb2.MakeDirectoryResponse:
        """Makes a workspace directory; an existing one is returned."""
        environment_id = validation.environment_id(request.environment_id)
        entry = await self._manager.files.make_directory(
            tenant_of(context),
            environment_id,
            request.path,
            parents=request.parents,
            mode=file_requests.directory_mode(request.mode),
        )
        return requests_pb2.MakeDirectoryResponse(file=convert.file_info(entry))

    async def StatFile(
        self, request: requests_pb2.StatFileRequest, context: Context
    ) -> requests_pb2.StatFileResponse:
        """Whether a workspace path exists, and its metadata."""
        environment_id = validation.environment_id(request.environment_id)
        entry = await self._manager.files.stat(tenant_of(context), environment_id, request.path)
        if entry is None:
            return requests_pb2.StatFileResponse(exists=False)
        return requests_pb2.StatFileResponse(exists=True, file=convert.file_info(entry))

    async def DownloadDirectory(
        self, request: requests_pb2.DownloadDirectoryRequest, context: Context
    ) -> AsyncGenerator[requests_pb2.DownloadDirectoryResponse, None]:
        """A workspace directory as a tar stream."""
        environment_id = validation.environment_id(request.environment_id)
        chunks = self._manager.files.download(tenant_of(context), environment_id, request.path)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield requests_pb2.DownloadDirectoryResponse(chunk=chunk)

    async def UploadDirectory(
        self, stream: AsyncIterator[requests_pb2.UploadDirectoryRequest], context: Context
    ) -> requests_pb2.UploadDirectoryResponse:
        """Unpacks a tar stream into a workspace directory: all of it or nothing."""
        requests = aiter(stream)
        first = await file_requests.first_upload_message(requests)
        environment_id = validation.environment_id(first.environment_id)
        unpacked = await self._manager.files.upload(
            tenant_of(context),
            environment_id,
            first.path,
            file_requests.upload_chunks(first, requests),
        )
        return requests_pb2.UploadDirectoryResponse(
            files_written=unpacked.files_written, bytes_written=unpacked.bytes_written
        )

    async def ForwardPort(
        self, stream: AsyncIterator[requests_pb2.ForwardPortRequest], context: Context
    ) -> AsyncGenerator[requests_pb2.ForwardPortResponse, None]:
        """Carries one TCP connection to a port inside the environment, both ways."""
        requests = aiter(stream)
        environment_id, port = await forward_requests.forward_target(requests)
        chunks = self._manager.forwarding.forward(
            tenant_of(context), environment_id, port, forward_requests.forwarded_bytes(requests)
        )
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield requests_pb2.ForwardPortResponse(data=chunk)

    # --- background processes (see processes.py) -------------------------------------

    def _process(self, request: Any, context: Context) -> Any:
        environment_id = validation.environment_id(request.environment_id)
        process_id = process_requests.process_id(request.process_id)
        return self._manager.processes.get(tenant_of(context), environment_id, process_id)

    async def StartProcess(
        self, request: requests_pb2.StartProcessRequest, context: Context
    ) -> requests_pb2.StartProcessResponse:
        """Starts a command in the background."""
        environment_id = validation.environment_id(request.environment_id)
        command, pty = process_requests.start(request)
        started = await self._manager.processes.start(
            tenant_of(context),
            environment_id,
            command,
            keep_stdin=request.stdin,
            pty=pty,
            request_id=request.request_id,
        )
        return requests_pb2.StartProcessResponse(process=process_requests.process(started))

    async def GetProcess(
        self, request: requests_pb2.GetProcessRequest, context: Context
    ) -> requests_pb2.GetProcessResponse:
        """One process of the environment."""
        found = self._process(request, context)
        return requests_pb2.GetProcessResponse(process=process_requests.process(found))

    async def ListProcesses(
        self, request: requests_pb2.ListProcessesRequest, context: Context
    ) -> requests_pb2.ListProcessesResponse:
        """A page of the environment's processes, oldest first."""
        environment_id = validation.environment_id(request.environment_id)
        size, offset = process_requests.page(request)
        found = self._manager.processes.list(
            tenant_of(context), environment_id, request.include_finished
        )
        shown = found[offset : offset + size]
        token = str(offset + size) if offset + size < len(found) else ""
        return requests_pb2.ListProcessesResponse(
            processes=[process_requests.process(p) for p in shown], next_page_token=token
        )

    async def WaitProcess(
        self, request: requests_pb2.WaitProcessRequest, context: Context
    ) -> requests_pb2.WaitProcessResponse:
        """The process once it ended; the call's deadline bounds the wait."""
        found = self._process(request, context)
        await found.done.wait()
        return requests_pb2.WaitProcessResponse(process=process_requests.process(found))

    async def StreamProcessOutput(
        self, request: requests_pb2.StreamProcessOutputRequest, context: Context
    ) -> AsyncGenerator[requests_pb2.StreamProcessOutputResponse, None]:
        """The process's output and exit from after_sequence on."""
        found = self._process(request, context)
        if request.after_sequence < 0:
            raise invalid_argument([("after_sequence", "must not be negative")])
        events = self._manager.processes.output(found, request.after_sequence, request.follow)
        async for event in events:
            yield requests_pb2.StreamProcessOutputResponse(
                event=process_requests.output_event(event, found)
            )

    async def WriteProcessInput(
        self, request: requests_pb2.WriteProcessInputRequest, context: Context
    ) -> requests_pb2.WriteProcessInputResponse:
        """Writes to the process's stdin, or closes it."""
        found = self._process(request, context)
        data = process_requests.input_data(request)
        await self._manager.processes.write_input(found, data, request.close)
        return requests_pb2.WriteProcessInputResponse()

    async def SignalProcess(
        self, request: requests_pb2.SignalProcessRequest, context: Context
    ) -> requests_pb2.SignalProcessResponse:
        """Sends an allowed signal to the process."""
        found = self._process(request, context)
        number = process_requests.signal_number(request.signal)
        self._manager.processes.signal(found, number)
        return requests_pb2.SignalProcessResponse(process=process_requests.process(found))

    async def ResizeProcessTerminal(
        self, request: requests_pb2.ResizeProcessTerminalRequest, context: Context
    ) -> requests_pb2.ResizeProcessTerminalResponse:
        """Changes the size of the process's terminal."""
        found = self._process(request, context)
        rows, cols = process_requests.resize(request)
        await self._manager.processes.resize(found, rows, cols)
        return requests_pb2.ResizeProcessTerminalResponse()

    async def GetEnvironmentUsage(
        self, request: requests_pb2.GetEnvironmentUsageRequest, context: Context
    ) -> requests_pb2.GetEnvironmentUsageResponse:
        """A fresh usage sample and the limits to compare it with."""
        environment_id = validation.environment_id(request.environment_id)
        usage, spec = self._manager.environment_usage(tenant_of(context), environment_id)
        return requests_pb2.GetEnvironmentUsageResponse(
            usage=convert.usage(usage), limits=convert.limits(spec.limits)
        )

    async def StreamEnvironmentUsage(
        self, request: requests_pb2.StreamEnvironmentUsageRequest, context: Context
    ) -> AsyncGenerator[requests_pb2.StreamEnvironmentUsageResponse, None]:
        """Usage samples at an interval until the environment terminates."""
        environment_id = validation.environment_id(request.environment_id)
        interval = validation.usage_interval(request)
        samples = self._manager.stream_usage(tenant_of(context), environment_id, interval)
        async with contextlib.aclosing(samples):
            async for usage in samples:
                yield requests_pb2.StreamEnvironmentUsageResponse(usage=convert.usage(usage))

    async def GetCapacity(
        self, request: orchestrator_service_pb2.GetCapacityRequest, context: Context
    ) -> orchestrator_service_pb2.GetCapacityResponse:
        """Environments and resources promised, and the totals (experiment counts left 0)."""
        return convert.capacity(self._manager.capacity())

    async def GetTenantUsage(
        self, request: orchestrator_service_pb2.GetTenantUsageRequest, context: Context
    ) -> orchestrator_service_pb2.GetTenantUsageResponse:
        """The calling tenant's live environments and queued and running experiments here,
        from counters (O(1)); the tenant is the call's, never the request's."""
        return await self._tenant_usage.aread(tenant_of(context))
