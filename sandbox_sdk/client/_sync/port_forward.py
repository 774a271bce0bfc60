"""A local TCP listener whose connections each travel over a ``ForwardPort`` stream.

Hand-written, the thread-based twin of ``_async/port_forward.py``: a thread
accepts connections, and each connection has one thread reading the stream's
answers into the socket while gRPC's own thread reads the socket into the
stream.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from sandbox_sdk.api.v1 import requests_pb2
from sandbox_sdk.client._sync.transport import Transport
from sandbox_sdk.client.calls import translate
from sandbox_sdk.client.process_requests import forward_header
from sandbox_sdk.errors import SandboxError

LOCAL_HOST = "127.0.0.1"
READ_CHUNK = 64 * 1024
"""Bytes read from a local connection per ForwardPort message (the contract allows 1 MiB)."""

JOIN_TIMEOUT = 5.0
"""Seconds close() waits for each relay thread once its socket and call are closed."""

log = logging.getLogger("sandbox_sdk.forward")


def _shut(sock: socket.socket) -> None:
    """Wakes any thread blocked on the socket, then closes it."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class PortForward:
    """Forwards connections to a local port into an environment (``sandbox.forward``).

    ``with`` it to get the local port; leaving the block stops the listener and
    closes every connection. The relay runs on background threads. ``last_error``
    is the last failure of a forwarded connection (such as nothing listening on
    the remote port), also logged as a warning on the ``sandbox_sdk.forward``
    logger.
    """

    def __init__(
        self, transport: Transport, environment_id: str, remote_port: int, local_port: int
    ) -> None:
        self._transport = transport
        self.environment_id = environment_id
        self.remote_port = remote_port
        self.local_port = local_port
        self.last_error: SandboxError | None = None
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, Any] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> int:
        """Starts listening on 127.0.0.1 and returns the local port."""
        if self._listener is None:
            self._listener = socket.create_server((LOCAL_HOST, self.local_port))
            self.local_port = self._listener.getsockname()[1]
            self._spawn(self._accept, self._listener)
        return self.local_port

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(
            target=target, args=args, daemon=True, name=f"sandbox-forward-{self.local_port}"
        )
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            with self._lock:
                if self._listener is None:
                    _shut(connection)
                    return
                self._connections[connection] = None
            self._spawn(self._relay, connection)

    def _relay(self, connection: socket.socket) -> None:
        call = None
        try:
            call = self._transport.open_bidi_stream("ForwardPort", self._requests(connection))
            with self._lock:
                closing = connection not in self._connections  # close() came first
                if not closing:
                    self._connections[connection] = call
            if not closing:
                for message in call:
                    connection.sendall(message.data)
        except grpc.RpcError as error:
            self._report(translate(error, self._transport.target, "ForwardPort"))
        except SandboxError as error:  # no credentials to open the call with
            self._report(error)
        except OSError:
            pass  # the local client went away; cancelling the call ends the remote side
        finally:
            if call is not None:
                call.cancel()
            with self._lock:
                self._connections.pop(connection, None)
            _shut(connection)

    def _requests(self, connection: socket.socket) -> Iterator[requests_pb2.ForwardPortRequest]:
        yield forward_header(self.environment_id, self.remote_port)
        while True:
            try:
                data = connection.recv(READ_CHUNK)
            except OSError:
                return
            if not data:
                return  # ending the stream half-closes the remote connection
            yield requests_pb2.ForwardPortRequest(data=data)

    def _report(self, error: SandboxError) -> None:
        if error.code == grpc.StatusCode.CANCELLED:
            return  # we closed it
        self.last_error = error
        log.warning(
            "forwarding 127.0.0.1:%d to %s:%d failed: %s",
            self.local_port,
            self.environment_id,
            self.remote_port,
            self.last_error,
        )

    def close(self) -> None:
        """Stops listening and closes every forwarded connection."""
        with self._lock:
            listener, self._listener = self._listener, None
            connections = list(self._connections.items())
            self._connections.clear()
            threads = list(self._threads)
        if listener is not None:
            _shut(listener)
        for connection, call in connections:
            if call is not None:
                call.cancel()
            _shut(connection)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(JOIN_TIMEOUT)

    def __enter__(self) -> int:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({LOCAL_HOST}:{self.local_port} -> "
            f"{self.environment_id}:{self.remote_port})"
        )
