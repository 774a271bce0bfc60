"""A local TCP listener whose connections each travel over a ``ForwardPort`` stream.

Hand-written, with a thread-based twin in ``_sync/port_forward.py``: relaying
sockets is what asyncio and blocking code do most differently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from sandbox_sdk.api.v1 import requests_pb2
from sandbox_sdk.client._async import glue
from sandbox_sdk.client._async.transport import AsyncTransport
from sandbox_sdk.client.calls import translate
from sandbox_sdk.client.process_requests import forward_header
from sandbox_sdk.errors import SandboxError

LOCAL_HOST = "127.0.0.1"
READ_CHUNK = 64 * 1024
"""Bytes read from a local connection per ForwardPort message (the contract allows 1 MiB)."""

log = logging.getLogger("sandbox_sdk.forward")


class AsyncPortForward:
    """Forwards connections to a local port into an environment (``sandbox.forward``).

    ``async with`` it to get the local port; leaving the block stops the
    listener and closes every connection. ``last_error`` is the last failure of
    a forwarded connection (such as nothing listening on the remote port),
    also logged as a warning on the ``sandbox_sdk.forward`` logger.
    """

    def __init__(
        self, transport: AsyncTransport, environment_id: str, remote_port: int, local_port: int
    ) -> None:
        self._transport = transport
        self.environment_id = environment_id
        self.remote_port = remote_port
        self.local_port = local_port
        self.last_error: SandboxError | None = None
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Starts listening on 127.0.0.1 and returns the local port."""
        if self._server is None:
            self._server = await asyncio.start_server(self._relay, LOCAL_HOST, self.local_port)
            self.local_port = self._server.sockets[0].getsockname()[1]
        return self.local_port

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._relays.add(task)
        call = None
        try:
            call = await self._transport.open_bidi_stream("ForwardPort", self._requests(reader))
            while (message := await glue.next_message(call)) is not None:
                writer.write(message.data)
                await writer.drain()
        except grpc.RpcError as error:
            self._report(translate(error, self._transport.target, "ForwardPort"))
        except SandboxError as error:  # no credentials to open the call with
            self._report(error)
        except OSError:
            pass  # the local client went away; cancelling the call below ends the remote side
        finally:
            if call is not None:
                call.cancel()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if task is not None:
                self._relays.discard(task)

    async def _requests(
        self, reader: asyncio.StreamReader
    ) -> AsyncIterator[requests_pb2.ForwardPortRequest]:
        yield forward_header(self.environment_id, self.remote_port)
        while data := await reader.read(READ_CHUNK):
            yield requests_pb2.ForwardPortRequest(data=data)
        # Ending the stream half-closes the remote connection; its answer still flows.

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

    async def aclose(self) -> None:
        """Stops listening and closes every forwarded connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        relays = list(self._relays)
        for relay in relays:
            relay.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> int:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({LOCAL_HOST}:{self.local_port} -> "
            f"{self.environment_id}:{self.remote_port})"
        )
