"""The file RPCs at the gRPC level, through the gateway to a real orchestrator and
sandbox: RemoveFile, RenameFile, MakeDirectory, StatFile, DownloadDirectory and
the client-streaming UploadDirectory, over the in-process link and over gRPC,
with the gateway's authentication and scopes in front of them."""

from __future__ import annotations

import contextlib
import io
import tarfile
from collections.abc import Iterator

import grpc
import pytest
from e2e_support import EmbeddedStack, Gateway, Metadata, bearer, unique_tenant

from sandbox_sdk.api.v1 import environment_pb2, requests_pb2

pytestmark = pytest.mark.isolation

_TIMEOUT = 30.0


@pytest.fixture
def environment_id(gateway: Gateway) -> Iterator[str]:
    """A running environment, deleted after the test."""
    with _environment(gateway) as created:
        yield created


@contextlib.contextmanager
def _environment(gateway: Gateway) -> Iterator[str]:
    created = gateway.stub.CreateEnvironment(
        requests_pb2.CreateEnvironmentRequest(
            files=[environment_pb2.FileContent(path="src/main.py", content=b"print(42)\n")]
        ),
        metadata=gateway.key,
        timeout=_TIMEOUT,
    )
    try:
        yield created.environment.id
    finally:
        gateway.stub.DeleteEnvironment(
            requests_pb2.DeleteEnvironmentRequest(environment_id=created.environment.id),
            metadata=gateway.key,
            timeout=_TIMEOUT,
        )


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _upload(
    gateway: Gateway, environment_id: str, path: str, data: bytes, key: Metadata | None = None
) -> requests_pb2.UploadDirectoryResponse:
    def messages() -> Iterator[requests_pb2.UploadDirectoryRequest]:
        yield requests_pb2.UploadDirectoryRequest(environment_id=environment_id, path=path)
        for start in range(0, len(data), 4096):
            yield requests_pb2.UploadDirectoryRequest(chunk=data[start : start + 4096])

    response: requests_pb2.UploadDirectoryResponse = gateway.stub.UploadDirectory(
        messages(), metadata=gateway.key if key is None else key, timeout=_TIMEOUT
    )
    return response


def _download(gateway: Gateway, environment_id: str, path: str) -> tarfile.TarFile:
    chunks = gateway.stub.DownloadDirectory(
        requests_pb2.DownloadDirectoryRequest(environment_id=environment_id, path=path),
        metadata=gateway.key,
        timeout=_TIMEOUT,
    )
    data = b"".join(message.chunk for message in chunks)
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:")


def test_each_file_rpc_through_the_gateway(gateway: Gateway, environment_id: str) -> None:
    stub, key, eid = gateway.stub, gateway.key, environment_id
    made = stub.MakeDirectory(
        requests_pb2.MakeDirectoryRequest(environment_id=eid, path="out/logs", parents=True),
        metadata=key,
        timeout=_TIMEOUT,
    )
    assert (made.file.path, made.file.is_dir, made.file.mode) == ("out/logs", True, 0o755)

    renamed = stub.RenameFile(
        requests_pb2.RenameFileRequest(
            environment_id=eid, source_path="src/main.py", destination_path="out/main.py"
        ),
        metadata=key,
        timeout=_TIMEOUT,
    )
    assert (renamed.file.path, renamed.file.size_bytes) == ("out/main.py", 10)

    stat = stub.StatFile(
        requests_pb2.StatFileRequest(environment_id=eid, path="out/main.py"),
        metadata=key,
        timeout=_TIMEOUT,
    )
    assert stat.exists
    assert not stat.file.is_dir

    uploaded = _upload(gateway, eid, "data", _tar({"a.txt": b"a" * 10_000, "b/c.txt": b"c"}))
    assert (uploaded.files_written, uploaded.bytes_written) == (2, 10_001)

    archive = _download(gateway, eid, "")
    names = set(archive.getnames())
    assert {"out/main.py", "out/logs", "data/a.txt", "data/b/c.txt"} <= names
    reader = archive.extractfile("data/a.txt")
    assert reader is not None
    assert reader.read() == b"a" * 10_000

    removed = stub.RemoveFile(
        requests_pb2.RemoveFileRequest(environment_id=eid, path="data", recursive=True),
        metadata=key,
        timeout=_TIMEOUT,
    )
    assert removed.removed
    gone = stub.StatFile(
        requests_pb2.StatFileRequest(environment_id=eid, path="data"),
        metadata=key,
        timeout=_TIMEOUT,
    )
    assert not gone.exists


def test_hostile_uploads_and_paths_are_invalid_through_the_gateway(
    gateway: Gateway, environment_id: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        _upload(gateway, environment_id, "", _tar({"../escape.txt": b"x"}))
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'../escape.txt'" in (error.value.details() or "")

    with pytest.raises(grpc.RpcError) as error:
        gateway.stub.RenameFile(
            requests_pb2.RenameFileRequest(
                environment_id=environment_id,
                source_path="src/main.py",
                destination_path="/etc/passwd",
            ),
            metadata=gateway.key,
            timeout=_TIMEOUT,
        )
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "destination_path" in (error.value.details() or "")

    with pytest.raises(grpc.RpcError) as error:
        gateway.stub.RemoveFile(
            requests_pb2.RemoveFileRequest(environment_id=environment_id, path="src"),
            metadata=gateway.key,
            timeout=_TIMEOUT,
        )
    assert error.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_uploads_are_routed_by_their_first_message_and_admitted_like_any_call(
    stack: EmbeddedStack, in_process: Gateway
) -> None:
    with _environment(in_process) as environment_id:
        _refusals(stack, in_process, environment_id)


def _refusals(stack: EmbeddedStack, in_process: Gateway, environment_id: str) -> None:
    stub = in_process.stub
    with pytest.raises(grpc.RpcError) as error:
        stub.UploadDirectory(iter(()), metadata=in_process.key, timeout=_TIMEOUT)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "environment_id" in (error.value.details() or "")

    unknown = "env-" + environment_id.split("-")[1] + "-0123456789abcdef"
    with pytest.raises(grpc.RpcError) as error:
        _upload(in_process, unknown, "", _tar({"f": b"x"}))
    assert error.value.code() is grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.RpcError) as error:
        _upload(in_process, environment_id, "", _tar({"f": b"x"}), key=())
    assert error.value.code() is grpc.StatusCode.UNAUTHENTICATED

    reader = bearer(stack.tenant_key(unique_tenant("files"), scopes=("read",)))
    with pytest.raises(grpc.RpcError) as error:
        _upload(in_process, environment_id, "", _tar({"f": b"x"}), key=reader)
    assert error.value.code() is grpc.StatusCode.PERMISSION_DENIED

    # Another tenant's key does not reach this tenant's environment.
    other = bearer(stack.tenant_key(unique_tenant("files")))
    with pytest.raises(grpc.RpcError) as error:
        _upload(in_process, environment_id, "", _tar({"f": b"x"}), key=other)
    assert error.value.code() is grpc.StatusCode.NOT_FOUND
