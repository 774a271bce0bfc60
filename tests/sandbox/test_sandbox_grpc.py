"""The environment RPCs through a real grpc.aio server with the ErrorInterceptor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from sandbox_support import (
    command_pids,
    eventually,
    fast_settings,
    needs_isolation,
    running_manager,
)

from sandbox_sdk.api.v1 import (
    common_pb2,
    environment_pb2,
    orchestrator_service_pb2,
    orchestrator_service_pb2_grpc,
    requests_pb2,
)
from sandbox_sdk.errors import SandboxError, from_rpc_error
from sandbox_sdk.server.orchestrator.sandbox import EnvironmentHandlers, SandboxManager
from sandbox_sdk.server.orchestrator.servicer import add_orchestrator_service, handler_table
from sandbox_sdk.server.status import ErrorInterceptor
from sandbox_sdk.server.tenancy import TENANT_KEY

pytestmark = needs_isolation

Context = grpc.aio.ServicerContext[Any, Any]


def _tenant(name: str) -> tuple[tuple[str, str]]:
    return ((TENANT_KEY, name),)


async def _served(manager: SandboxManager) -> tuple[grpc.aio.Server, int]:
    """The environment RPCs served as the orchestrator serves them (its servicer's
    serializers: a handler may answer with bytes it serialized already)."""
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    add_orchestrator_service(server, handler_table(EnvironmentHandlers(manager), object(), None))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _error(call: Any) -> SandboxError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return from_rpc_error(raised.value)


def _seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


async def test_environment_rpcs_end_to_end(tmp_path: Path) -> None:
    async with running_manager(tmp_path, settings=fast_settings()) as manager:
        server, port = await _served(manager)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
                me = _tenant("tenant-a")
                created = await stub.CreateEnvironment(
                    requests_pb2.CreateEnvironmentRequest(
                        spec=environment_pb2.EnvironmentSpec(
                            limits=common_pb2.ResourceLimits(memory_bytes=64 << 20),
                            labels={"suite": "grpc"},
                        ),
                        files=[environment_pb2.FileContent(path="hello.txt", content=b"hi")],
                        request_id="6a0f1c9e-4d2b-4f8e-9c1a-000000000001",
                    ),
                    metadata=me,
                )
                environment = created.environment
                assert environment.state == environment_pb2.ENVIRONMENT_STATE_RUNNING
                assert environment.spec.limits.memory_bytes == 64 << 20
                assert environment.spec.limits.cpu_cores == 1.0  # the default, filled in
                runtime = manager.launcher.runtime(manager.settings.default_runtime)
                assert environment.isolation == runtime.level(manager.isolation)
                env_id = environment.id

                script = "import os, sys; sys.stdout.buffer.write(os.urandom(3 << 20))"
                stdout = bytearray()
                events = []
                async for response in stub.ExecCommand(
                    requests_pb2.ExecCommandRequest(
                        environment_id=env_id, argv=["python3", "-c", script]
                    ),
                    metadata=me,
                ):
                    events.append(response.WhichOneof("event"))
                    stdout += response.stdout
                assert events[0] == "started"
                assert events[-1] == "exited"
                assert len(stdout) == 3 << 20

                read = await stub.ReadFile(
                    requests_pb2.ReadFileRequest(environment_id=env_id, path="hello.txt"),
                    metadata=me,
                )
                assert read.content == b"hi"
                listed = await stub.ListFiles(
                    requests_pb2.ListFilesRequest(environment_id=env_id), metadata=me
                )
                assert [f.path for f in listed.files] == ["hello.txt"]
                usage = await stub.GetEnvironmentUsage(
                    requests_pb2.GetEnvironmentUsageRequest(environment_id=env_id), metadata=me
                )
                assert usage.limits.memory_bytes == 64 << 20
                capacity = await stub.GetCapacity(
                    orchestrator_service_pb2.GetCapacityRequest(), metadata=me
                )
                assert capacity.environments_running == 1
                updated = await stub.UpdateEnvironment(
                    requests_pb2.UpdateEnvironmentRequest(
                        environment_id=env_id,
                        spec=environment_pb2.EnvironmentSpec(labels={"suite": "renamed"}),
                        update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
                    ),
                    metadata=me,
                )
                assert dict(updated.environment.spec.labels) == {"suite": "renamed"}
                got = await stub.GetEnvironment(
                    requests_pb2.GetEnvironmentRequest(environment_id=env_id), metadata=me
                )
                assert got.environment == updated.environment

                other = await _error(
                    stub.GetEnvironment(
                        requests_pb2.GetEnvironmentRequest(environment_id=env_id),
                        metadata=_tenant("tenant-b"),
                    )
                )
                assert (other.code, other.reason) == (
                    grpc.StatusCode.NOT_FOUND,
                    "ENVIRONMENT_NOT_FOUND",
                )

                samples = stub.StreamEnvironmentUsage(
                    requests_pb2.StreamEnvironmentUsageRequest(
                        environment_id=env_id, interval=_seconds(0.1)
                    ),
                    metadata=me,
                )
                first = await samples.read()
                assert first.usage.sample_time.seconds > 0
                deleted = await stub.DeleteEnvironment(
                    requests_pb2.DeleteEnvironmentRequest(environment_id=env_id), metadata=me
                )
                assert deleted.environment.state == environment_pb2.ENVIRONMENT_STATE_TERMINATED
                assert (
                    deleted.environment.termination_reason
                    == environment_pb2.TERMINATION_REASON_USER_DELETED
                )
                while await samples.read() is not grpc.aio.EOF:
                    pass  # the stream ends once the environment is gone
                assert await samples.code() is grpc.StatusCode.OK

                after = await _error(
                    stub.ReadFile(
                        requests_pb2.ReadFileRequest(environment_id=env_id, path="hello.txt"),
                        metadata=me,
                    )
                )
                assert (after.code, after.reason) == (
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "ENVIRONMENT_NOT_RUNNING",
                )
        finally:
            await server.stop(None)


async def test_bad_requests_carry_field_violations_to_the_client(tmp_path: Path) -> None:
    async with running_manager(tmp_path, settings=fast_settings()) as manager:
        server, port = await _served(manager)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
                bad_create = await _error(
                    stub.CreateEnvironment(
                        requests_pb2.CreateEnvironmentRequest(
                            spec=environment_pb2.EnvironmentSpec(
                                limits=common_pb2.ResourceLimits(
                                    cpu_cores=-1, memory_bytes=1 << 50, max_pids=2
                                ),
                                ttl=_seconds(-5),
                                env_vars={"1BAD": "x"},
                            ),
                            files=[environment_pb2.FileContent(path="../up", content=b"")],
                        )
                    )
                )
                assert bad_create.code is grpc.StatusCode.INVALID_ARGUMENT
                fields = {v.field for v in bad_create.field_violations}
                assert fields == {
                    "spec.limits.cpu_cores",
                    "spec.limits.memory_bytes",
                    "spec.limits.max_pids",
                    "spec.ttl",
                    "spec.env_vars['1BAD']",
                    "files[0].path",
                }
                assert all(v.description for v in bad_create.field_violations)

                bad_id = await _error(
                    stub.GetEnvironment(requests_pb2.GetEnvironmentRequest(environment_id="x"))
                )
                assert [v.field for v in bad_id.field_violations] == ["environment_id"]
                foreign = await _error(
                    stub.GetEnvironment(
                        requests_pb2.GetEnvironmentRequest(environment_id="env-zz-0123456789abcdef")
                    )
                )
                assert foreign.code is grpc.StatusCode.NOT_FOUND

                created = await stub.CreateEnvironment(requests_pb2.CreateEnvironmentRequest())
                env_id = created.environment.id
                empty_argv = await _error(
                    stub.ExecCommand(requests_pb2.ExecCommandRequest(environment_id=env_id)).read()
                )
                assert [v.field for v in empty_argv.field_violations] == ["argv"]
                bad_mask = await _error(
                    stub.UpdateEnvironment(
                        requests_pb2.UpdateEnvironmentRequest(
                            environment_id=env_id,
                            update_mask=field_mask_pb2.FieldMask(paths=["limits", "labels"]),
                        )
                    )
                )
                assert [v.field for v in bad_mask.field_violations] == ["update_mask.paths[0]"]
                traversal = await _error(
                    stub.WriteFile(
                        requests_pb2.WriteFileRequest(
                            environment_id=env_id,
                            file=environment_pb2.FileContent(path="/etc/passwd", content=b"x"),
                        )
                    )
                )
                assert [v.field for v in traversal.field_violations] == ["file.path"]
                slow_stream = await _error(
                    stub.StreamEnvironmentUsage(
                        requests_pb2.StreamEnvironmentUsageRequest(
                            environment_id=env_id, interval=_seconds(0.01)
                        )
                    ).read()
                )
                assert [v.field for v in slow_stream.field_violations] == ["interval"]
        finally:
            await server.stop(None)


@pytest.mark.bubblewrap_only(
    reason="watches the commands as host processes, which gVisor's are not; "
    "test_cancelling_the_stream_kills_the_process_tree_inside checks it under both"
)
async def test_cancelling_an_exec_call_kills_its_processes(tmp_path: Path) -> None:
    async with running_manager(tmp_path, settings=fast_settings()) as manager:
        server, port = await _served(manager)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = orchestrator_service_pb2_grpc.OrchestratorServiceStub(channel)
                created = await stub.CreateEnvironment(requests_pb2.CreateEnvironmentRequest())
                env_id = created.environment.id
                call = stub.ExecCommand(
                    requests_pb2.ExecCommandRequest(
                        environment_id=env_id, argv=["sh", "-c", "sleep 300 & echo up; wait"]
                    )
                )
                assert (await call.read()).WhichOneof("event") == "started"
                assert (await call.read()).stdout == b"up\n"
                assert command_pids(env_id)
                call.cancel()
                await eventually(lambda: not command_pids(env_id), what="the cancelled tree died")
        finally:
            await server.stop(None)
