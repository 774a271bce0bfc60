"""The fake gateway with background processes and port forwarding (#15).

Processes are local subprocesses (under a local pty when asked); their output
becomes numbered events, kept whole. ``break_output_after`` makes the next
StreamProcessOutput call fail with UNAVAILABLE after that many events, to
exercise resuming. ForwardPort connects to 127.0.0.1:<port> on this machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import signal
import socket
import struct
import subprocess
import termios
import threading
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from sdk_fake_gateway import FakeGateway, ServiceError

from sandbox_sdk.api.v1 import environment_pb2, process_pb2, requests_pb2
from sandbox_sdk.errors import ErrorReason

RUNNING = process_pb2.PROCESS_STATE_RUNNING


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _shut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


@dataclass
class FakeProcess:
    message: process_pb2.Process
    popen: subprocess.Popen[bytes]
    terminal: int | None = None  # the pty's master side
    events: list[process_pb2.ProcessOutputEvent] = field(default_factory=list)


class FakeProcessGateway(FakeGateway):
    """FakeGateway plus the process and ForwardPort RPCs."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.processes: dict[str, FakeProcess] = {}
        self.break_output_after: int | None = None
        self.forwarded: list[int] = []

    # -- processes -------------------------------------------------------------------------

    def _process(self, request: Any, context: grpc.ServicerContext) -> FakeProcess:
        self._environment(request.environment_id, context)
        record = self.processes.get(request.process_id)
        if record is None or record.message.environment_id != request.environment_id:
            self._abort(
                context,
                ServiceError(
                    grpc.StatusCode.NOT_FOUND,
                    ErrorReason.PROCESS_NOT_FOUND,
                    f"process {request.process_id} not found; `sandbox-sdk env ps` lists them",
                ),
            )
        assert record is not None
        return record

    def _append(self, record: FakeProcess, **payload: Any) -> None:
        with self.condition:
            event = process_pb2.ProcessOutputEvent(
                sequence=len(record.events) + 1, time=_now(), **payload
            )
            record.events.append(event)
            self.condition.notify_all()

    def _pump(self, record: FakeProcess, source: Any, stream: str) -> None:
        while True:
            try:
                data = os.read(source, 4096) if isinstance(source, int) else source.read1(4096)
            except OSError:  # a pty's master reads EIO once the process has gone
                data = b""
            if not data:
                return
            for line in data.splitlines(keepends=True):  # an event a line: resumes are tested
                self._append(record, **{stream: line})

    def _reap(self, record: FakeProcess, pumps: list[threading.Thread]) -> None:
        status = record.popen.wait()
        for pump in pumps:
            pump.join()
        message = record.message
        message.end_time.CopyFrom(_now())
        message.stdin_open = False
        message.cpu_seconds = 0.01
        message.max_rss_bytes = 1 << 20
        if status >= 0:
            message.state = process_pb2.PROCESS_STATE_EXITED
            message.exit_code = status
            message.termination_reason = environment_pb2.EXIT_REASON_EXITED
        else:
            message.state = process_pb2.PROCESS_STATE_KILLED
            message.signal = -status
            message.termination_reason = environment_pb2.EXIT_REASON_SIGNALED
        if record.terminal is not None:
            os.close(record.terminal)
        exited = process_pb2.Process()
        exited.CopyFrom(message)
        self._append(record, exited=exited)

    def _spawn(self, request: Any, message: process_pb2.Process) -> FakeProcess:
        env = {"PATH": "/usr/bin:/bin", **dict(request.env)}
        if request.HasField("pty"):
            master, slave = pty.openpty()
            size = struct.pack("HHHH", request.pty.rows, request.pty.cols, 0, 0)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
            popen = subprocess.Popen(
                list(request.argv),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                start_new_session=True,
            )
            os.close(slave)
            record = FakeProcess(message, popen, terminal=master)
            sources = [(master, "stdout")]
        else:
            popen = subprocess.Popen(
                list(request.argv),
                stdin=subprocess.PIPE if request.stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
            record = FakeProcess(message, popen)
            sources = [(popen.stdout, "stdout"), (popen.stderr, "stderr")]
        pumps = [
            threading.Thread(target=self._pump, args=(record, source, name), daemon=True)
            for source, name in sources
        ]
        for pump in pumps:
            pump.start()
        threading.Thread(target=self._reap, args=(record, pumps), daemon=True).start()
        return record

    def StartProcess(self, request, context):
        self._enter("StartProcess", request, context)
        if request.request_id in self.by_request_id:
            return self.by_request_id[request.request_id]
        self._environment(request.environment_id, context)
        message = process_pb2.Process(
            id=f"p-{len(self.processes) + 1:012x}",
            environment_id=request.environment_id,
            argv=request.argv,
            cwd=request.cwd or "/workspace",
            state=RUNNING,
            exit_code=-1,
            start_time=_now(),
            pty=request.HasField("pty"),
            stdin_open=request.stdin or request.HasField("pty"),
        )
        try:
            record = self._spawn(request, message)
        except OSError as error:
            message.state = process_pb2.PROCESS_STATE_FAILED_TO_START
            message.stdin_open = False
            message.start_error = error.strerror or str(error)
            record = FakeProcess(message, None)  # type: ignore[arg-type]
        else:
            message.pid = record.popen.pid
        self.processes[message.id] = record
        response = requests_pb2.StartProcessResponse(process=message)
        if request.request_id:
            self.by_request_id[request.request_id] = response
        return response

    def GetProcess(self, request, context):
        self._enter("GetProcess", request, context)
        return requests_pb2.GetProcessResponse(process=self._process(request, context).message)

    def ListProcesses(self, request, context):
        self._enter("ListProcesses", request, context)
        self._environment(request.environment_id, context)
        items = [
            record.message
            for record in self.processes.values()
            if record.message.environment_id == request.environment_id
            and (request.include_finished or record.message.state == RUNNING)
        ]
        start = int(request.page_token or 0)
        size = request.page_size or 2  # small, so the SDK's paging is exercised
        token = str(start + size) if start + size < len(items) else ""
        return requests_pb2.ListProcessesResponse(
            processes=items[start : start + size], next_page_token=token
        )

    def WaitProcess(self, request, context):
        self._enter("WaitProcess", request, context)
        record = self._process(request, context)
        with self.condition:
            while record.message.state == RUNNING:
                if not context.is_active():
                    return requests_pb2.WaitProcessResponse()
                self.condition.wait(0.05)
        return requests_pb2.WaitProcessResponse(process=record.message)

    def StreamProcessOutput(self, request, context):
        self._enter("StreamProcessOutput", request, context)
        record = self._process(request, context)
        position = request.after_sequence
        sent = 0
        while context.is_active():
            with self.condition:
                pending = record.events[position:]
                if not pending:
                    if not request.follow or record.message.state != RUNNING:
                        return
                    self.condition.wait(0.05)
                    continue
            for event in pending:
                if self.break_output_after is not None and sent >= self.break_output_after:
                    self.break_output_after = None
                    context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (injected)")
                yield requests_pb2.StreamProcessOutputResponse(event=event)
                position = event.sequence
                sent += 1
                if event.HasField("exited"):
                    return

    def WriteProcessInput(self, request, context):
        self._enter("WriteProcessInput", request, context)
        record = self._process(request, context)
        if not record.message.stdin_open:
            self._abort(
                context,
                ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    ErrorReason.STDIN_CLOSED,
                    f"the stdin of {request.process_id} is closed; start it with stdin=True",
                ),
            )
        if record.terminal is not None:
            os.write(record.terminal, request.data + (b"\x04" if request.close else b""))
        else:
            stdin = record.popen.stdin
            assert stdin is not None
            with contextlib.suppress(BrokenPipeError):
                stdin.write(request.data)
                stdin.flush()
                if request.close:
                    stdin.close()
        if request.close:
            record.message.stdin_open = False
        return requests_pb2.WriteProcessInputResponse()

    def SignalProcess(self, request, context):
        self._enter("SignalProcess", request, context)
        record = self._process(request, context)
        if record.message.state == RUNNING:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.popen.pid, request.signal)
        return requests_pb2.SignalProcessResponse(process=record.message)

    def ResizeProcessTerminal(self, request, context):
        self._enter("ResizeProcessTerminal", request, context)
        record = self._process(request, context)
        if record.terminal is None:
            self._abort(
                context,
                ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    ErrorReason.NOT_A_TERMINAL,
                    f"{request.process_id} has no terminal; start it with pty=(rows, cols)",
                ),
            )
        size = struct.pack("HHHH", request.size.rows, request.size.cols, 0, 0)
        with contextlib.suppress(OSError):
            fcntl.ioctl(record.terminal, termios.TIOCSWINSZ, size)
            os.killpg(record.popen.pid, signal.SIGWINCH)
        return requests_pb2.ResizeProcessTerminalResponse()

    # -- port forwarding -------------------------------------------------------------------

    def ForwardPort(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "header":
            self._abort(
                context,
                ServiceError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    ErrorReason.INVALID_ARGUMENT,
                    "the first ForwardPort message must be the header",
                ),
            )
        self._enter("ForwardPort", first, context)
        self._environment(first.header.environment_id, context)
        try:
            connection = socket.create_connection(("127.0.0.1", first.header.port))
        except OSError:
            self._abort(
                context,
                ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    ErrorReason.INVALID_ARGUMENT,
                    f"nothing listens on port {first.header.port} in the environment",
                ),
            )
        self.forwarded.append(first.header.port)
        context.add_callback(lambda: _shut(connection))  # a cancelled call frees its recv
        threading.Thread(
            target=self._to_connection, args=(request_iterator, connection), daemon=True
        ).start()
        try:
            while data := connection.recv(65536):
                yield requests_pb2.ForwardPortResponse(data=data)
        except OSError:
            return
        finally:
            connection.close()

    @staticmethod
    def _to_connection(requests: Any, connection: socket.socket) -> None:
        try:
            for message in requests:
                connection.sendall(message.data)
            connection.shutdown(socket.SHUT_WR)
        except (OSError, grpc.RpcError, ValueError):
            _shut(connection)

    def stop_all(self) -> None:
        """Kills every process still running (test teardown)."""
        for record in self.processes.values():
            if record.popen is not None and record.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(record.popen.pid, signal.SIGKILL)
