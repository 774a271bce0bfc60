"""Background processes and PTYs (#15) through the real gateway, both ways it reaches
its orchestrator (in process and over gRPC): start, attach from two clients, resume,
stdin, signal, wait, a pty shell, and another tenant kept out."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from e2e_support import Gateway, bearer

from sandbox_sdk.api.v1 import (
    gateway_service_pb2,
    process_pb2,
    requests_pb2,
)

pytestmark = pytest.mark.isolation

_TIMEOUT = 30.0


@pytest.fixture
def environment_id(gateway: Gateway) -> Iterator[str]:
    """A running environment, deleted after the test."""
    created = gateway.stub.CreateEnvironment(
        requests_pb2.CreateEnvironmentRequest(), metadata=gateway.key, timeout=_TIMEOUT
    )
    try:
        yield created.environment.id
    finally:
        with contextlib.suppress(grpc.RpcError):
            gateway.stub.DeleteEnvironment(
                requests_pb2.DeleteEnvironmentRequest(environment_id=created.environment.id),
                metadata=gateway.key,
                timeout=_TIMEOUT,
            )


def _events(
    gateway: Gateway, environment_id: str, process_id: str, after: int = 0, follow: bool = True
) -> list[process_pb2.ProcessOutputEvent]:
    request = requests_pb2.StreamProcessOutputRequest(
        environment_id=environment_id, process_id=process_id, after_sequence=after, follow=follow
    )
    stream = gateway.stub.StreamProcessOutput(request, metadata=gateway.key, timeout=_TIMEOUT)
    return [response.event for response in stream]


def _wait(gateway: Gateway, environment_id: str, process_id: str) -> process_pb2.Process:
    request = requests_pb2.WaitProcessRequest(environment_id=environment_id, process_id=process_id)
    return gateway.stub.WaitProcess(request, metadata=gateway.key, timeout=_TIMEOUT).process


def test_a_process_through_the_gateway(gateway: Gateway, environment_id: str) -> None:
    started = gateway.stub.StartProcess(
        requests_pb2.StartProcessRequest(
            environment_id=environment_id,
            argv=["sh", "-c", "read first; echo got:$first; cat; echo done >&2; exit 4"],
            stdin=True,
            request_id="e2e-start-1",
        ),
        metadata=gateway.key,
        timeout=_TIMEOUT,
    ).process
    assert started.state == process_pb2.PROCESS_STATE_RUNNING
    # Two clients attach before anything is written; each sees everything.
    seen: list[list[process_pb2.ProcessOutputEvent]] = []

    def attach() -> None:
        seen.append(_events(gateway, environment_id, started.id))

    readers = [threading.Thread(target=attach) for _ in range(2)]
    for reader in readers:
        reader.start()
    for part, close in ((b"hello\n", False), (b"more ", False), (b"input", True)):
        gateway.stub.WriteProcessInput(
            requests_pb2.WriteProcessInputRequest(
                environment_id=environment_id, process_id=started.id, data=part, close=close
            ),
            metadata=gateway.key,
            timeout=_TIMEOUT,
        )
    ended = _wait(gateway, environment_id, started.id)
    for reader in readers:
        reader.join(_TIMEOUT)
    assert ended.state == process_pb2.PROCESS_STATE_EXITED
    assert ended.exit_code == 4
    assert len(seen) == 2
    for events in seen:
        assert b"".join(e.stdout for e in events) == b"got:hello\nmore input"
        assert b"".join(e.stderr for e in events) == b"done\n"
        assert events[-1].exited.exit_code == 4
    # Resuming after the first event loses nothing.
    rest = _events(gateway, environment_id, started.id, after=1)
    assert [e.sequence for e in rest] == [e.sequence for e in seen[0][1:]]
    listed = gateway.stub.ListProcesses(
        requests_pb2.ListProcessesRequest(environment_id=environment_id, include_finished=True),
        metadata=gateway.key,
        timeout=_TIMEOUT,
    )
    assert started.id in [p.id for p in listed.processes]


def test_a_pty_shell_and_a_signal_through_the_gateway(
    gateway: Gateway, environment_id: str
) -> None:
    shell = gateway.stub.StartProcess(
        requests_pb2.StartProcessRequest(
            environment_id=environment_id,
            argv=["sh"],
            pty=process_pb2.PtySize(rows=30, cols=100),
        ),
        metadata=gateway.key,
        timeout=_TIMEOUT,
    ).process
    assert shell.pty
    assert shell.stdin_open
    gateway.stub.WriteProcessInput(
        requests_pb2.WriteProcessInputRequest(
            environment_id=environment_id, process_id=shell.id, data=b"tty; stty size\n"
        ),
        metadata=gateway.key,
        timeout=_TIMEOUT,
    )
    deadline = time.monotonic() + _TIMEOUT
    output = b""
    while b"30 100" not in output and time.monotonic() < deadline:
        events = _events(gateway, environment_id, shell.id, follow=False)
        output = b"".join(e.stdout for e in events)
        time.sleep(0.05)
    assert b"/dev/pts/" in output
    assert b"30 100" in output
    killed = gateway.stub.SignalProcess(
        requests_pb2.SignalProcessRequest(
            environment_id=environment_id, process_id=shell.id, signal=9
        ),
        metadata=gateway.key,
        timeout=_TIMEOUT,
    ).process
    assert killed.id == shell.id
    ended = _wait(gateway, environment_id, shell.id)
    assert ended.state == process_pb2.PROCESS_STATE_KILLED
    assert ended.signal == 9


def test_another_tenant_cannot_see_the_process(gateway: Gateway, environment_id: str) -> None:
    started = gateway.stub.StartProcess(
        requests_pb2.StartProcessRequest(environment_id=environment_id, argv=["sleep", "30"]),
        metadata=gateway.key,
        timeout=_TIMEOUT,
    ).process
    other = gateway.stub.CreateApiKey(
        gateway_service_pb2.CreateApiKeyRequest(
            tenant="e2e-processes-other",
            scopes=[
                gateway_service_pb2.API_KEY_SCOPE_READ,
                gateway_service_pb2.API_KEY_SCOPE_WRITE,
            ],
        ),
        metadata=gateway.key,
        timeout=_TIMEOUT,
    )
    for call, request in (
        (
            gateway.stub.GetProcess,
            requests_pb2.GetProcessRequest(environment_id=environment_id, process_id=started.id),
        ),
        (
            gateway.stub.SignalProcess,
            requests_pb2.SignalProcessRequest(
                environment_id=environment_id, process_id=started.id, signal=9
            ),
        ),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            call(request, metadata=bearer(other.secret), timeout=_TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    still = gateway.stub.GetProcess(
        requests_pb2.GetProcessRequest(environment_id=environment_id, process_id=started.id),
        metadata=gateway.key,
        timeout=_TIMEOUT,
    ).process
    assert still.state == process_pb2.PROCESS_STATE_RUNNING
