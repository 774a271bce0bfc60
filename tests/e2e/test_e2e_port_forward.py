"""ForwardPort at the gRPC level, through the gateway to a real orchestrator and sandbox:
bytes both ways over the in-process link and over gRPC, routed by the header's
environment_id and admitted (key, scope, tenant) like every call."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import pytest
from e2e_support import EmbeddedStack, Gateway, Metadata, bearer, unique_tenant

from sandbox_sdk.api.v1 import environment_pb2, requests_pb2

pytestmark = [pytest.mark.isolation, pytest.mark.timeout(180)]

Request = requests_pb2.ForwardPortRequest
_TIMEOUT = 60.0
_SERVER = (Path(__file__).parents[1] / "sandbox" / "port_forward_server.py").read_bytes()
_LAUNCHER = (
    "import subprocess, sys\n"
    "server = subprocess.Popen([sys.executable, 'port_forward_server.py', *sys.argv[1:]],"
    " stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,"
    " start_new_session=True)\n"
    "sys.exit(0 if server.stdout.readline() == b'ready\\n' else 1)\n"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def _environment_with(gateway: Gateway, mode: str, port: int) -> Iterator[str]:
    """A running environment whose test server (``mode``) listens on ``port``; deleted after."""
    created = gateway.stub.CreateEnvironment(
        requests_pb2.CreateEnvironmentRequest(
            files=[environment_pb2.FileContent(path="port_forward_server.py", content=_SERVER)]
        ),
        metadata=gateway.key,
        timeout=_TIMEOUT,
    )
    environment_id = created.environment.id
    try:
        events = gateway.stub.ExecCommand(
            requests_pb2.ExecCommandRequest(
                environment_id=environment_id, argv=["python3", "-c", _LAUNCHER, mode, str(port)]
            ),
            metadata=gateway.key,
            timeout=_TIMEOUT,
        )
        exits = [event.exited for event in events if event.WhichOneof("event") == "exited"]
        assert [e.exit_code for e in exits] == [0]
        yield environment_id
    finally:
        gateway.stub.DeleteEnvironment(
            requests_pb2.DeleteEnvironmentRequest(environment_id=environment_id),
            metadata=gateway.key,
            timeout=_TIMEOUT,
        )


def _messages(environment_id: str, port: int, data: bytes = b"") -> Iterator[Request]:
    yield Request(header=requests_pb2.ForwardPortHeader(environment_id=environment_id, port=port))
    chunk = 128 << 10
    for start in range(0, len(data), chunk):
        yield Request(data=data[start : start + chunk])


def _forward(gateway: Gateway, requests: Iterable[Request], key: Metadata | None = None) -> bytes:
    responses = gateway.stub.ForwardPort(
        iter(requests), metadata=gateway.key if key is None else key, timeout=_TIMEOUT
    )
    return b"".join(response.data for response in responses)


def _refused(
    gateway: Gateway, requests: Iterable[Request], key: Metadata | None = None
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        _forward(gateway, requests, key)
    return raised.value


def test_a_connection_is_carried_both_ways_through_the_gateway(gateway: Gateway) -> None:
    port = _free_port()
    with _environment_with(gateway, "digest", port) as environment_id:
        payload = os.urandom(4 << 20)
        answer = _forward(gateway, _messages(environment_id, port, payload))
        assert answer.decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"

        refused = _refused(gateway, _messages(environment_id, port + 1 if port < 65535 else 1))
        assert refused.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "nothing listens on port" in (refused.details() or "")

        hostile = _refused(gateway, _messages(environment_id, 70000))
        assert hostile.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "header.port" in (hostile.details() or "")


def test_an_echo_flows_both_ways_at_once_through_the_gateway(gateway: Gateway) -> None:
    port = _free_port()
    with _environment_with(gateway, "echo", port) as environment_id:
        payload = os.urandom(8 << 20)
        echoed = _forward(gateway, _messages(environment_id, port, payload))
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


def test_forwards_are_routed_by_their_header_and_admitted_like_any_call(
    stack: EmbeddedStack, in_process: Gateway
) -> None:
    port = _free_port()
    with _environment_with(in_process, "echo", port) as environment_id:
        no_header = _refused(in_process, [Request(data=b"GET / HTTP/1.0\r\n\r\n")])
        assert no_header.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "environment_id" in (no_header.details() or "")

        unknown = "env-" + environment_id.split("-")[1] + "-0123456789abcdef"
        assert _refused(in_process, _messages(unknown, port)).code() is grpc.StatusCode.NOT_FOUND

        no_key = _refused(in_process, _messages(environment_id, port, b"x"), key=())
        assert no_key.code() is grpc.StatusCode.UNAUTHENTICATED

        reader = bearer(stack.tenant_key(unique_tenant("forward"), scopes=("read",)))
        read_only = _refused(in_process, _messages(environment_id, port, b"x"), key=reader)
        assert read_only.code() is grpc.StatusCode.PERMISSION_DENIED

        other = bearer(stack.tenant_key(unique_tenant("forward")))
        other_tenant = _refused(in_process, _messages(environment_id, port, b"x"), key=other)
        assert other_tenant.code() is grpc.StatusCode.NOT_FOUND

        assert _forward(in_process, _messages(environment_id, port, b"still here")) == (
            b"still here"
        )
