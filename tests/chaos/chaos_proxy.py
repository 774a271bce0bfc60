"""A TCP proxy on 127.0.0.1 that breaks connections on demand, for the chaos tests.

It forwards bytes both ways between its clients and one upstream address, on
an asyncio loop in a daemon thread, and can

- ``cut()``: reset every open connection (RST, as a crashed peer or a
  firewall does), at once;
- ``cut_randomly(...)``: keep resetting connections at random moments while a
  block runs, so calls break at random points (mid-request, mid-stream);
- ``stall()``: blackhole every open connection: stop forwarding and drop what
  arrives, without closing it, as a dead peer or a dropped NAT mapping does.
  Connections opened later are forwarded normally.

Nothing is ever delayed or reordered: a byte either arrives or the connection
breaks, as with TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
CHUNK_BYTES = 64 * 1024
STOP_TIMEOUT_SECONDS = 10.0


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's side and the upstream side."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    stalled: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class ChaosProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream`` (``host:port``) until stopped."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="chaos-proxy", daemon=True
        )
        self._links: set[_Link] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self._accepting: asyncio.Task[None] | None = None
        self._forwarders: set[asyncio.Task[None]] = set()
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0
        self.cuts = 0

    @property
    def target(self) -> str:
        """The proxy's address, to give to a client instead of the upstream's."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> ChaosProxy:
        """Starts forwarding the connections made to ``target``."""
        self._thread.start()
        self._accepting = self._run(self._start_accepting())
        return self

    def stop(self) -> None:
        """Closes the listener and every connection, and ends the thread."""
        try:
            if self._thread.is_alive():
                self._run(self._shut_down())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(STOP_TIMEOUT_SECONDS)
            if not self._thread.is_alive():
                self._loop.close()
            self._listener.close()

    def __enter__(self) -> ChaosProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def open_connections(self) -> int:
        """Connections being forwarded (or stalled) now."""
        return self._run(self._count())

    def cut(self) -> int:
        """Resets every open connection; returns how many there were."""
        return self._run(self._cut_all())

    def stall(self) -> int:
        """Blackholes every open connection; returns how many there were."""
        return self._run(self._stall_all())

    @contextlib.contextmanager
    def cut_randomly(
        self, min_interval: float, max_interval: float, seed: int = 0
    ) -> Iterator[None]:
        """Resets the open connections at random moments while the block runs.

        The pauses between cuts are uniform in [min_interval, max_interval] seconds.
        """
        task = self._run(self._start_cutting(min_interval, max_interval, random.Random(seed)))
        try:
            yield
        finally:
            self._loop.call_soon_threadsafe(task.cancel)

    # -- on the proxy's loop --------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(STOP_TIMEOUT_SECONDS)

    async def _count(self) -> int:
        return len(self._links)

    async def _start_accepting(self) -> asyncio.Task[None]:
        return asyncio.create_task(self._accept_forever())

    async def _accept_forever(self) -> None:
        while True:
            client, _ = await self._loop.sock_accept(self._listener)
            reader, writer = await asyncio.open_connection(sock=client)
            task = asyncio.create_task(self._forward(reader, writer))
            self._forwarders.add(task)
            task.add_done_callback(self._forwarders.discard)

    async def _shut_down(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        await self._cut_all()
        for task in list(self._forwarders):
            task.cancel()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            _reset(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        self.connections += 1
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, up_writer)),
            asyncio.create_task(self._pump(link, up_reader, writer)),
        ]
        # When either side ends (or fails), the connection ends on both sides.
        await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        self._close(link)

    async def _pump(
        self, link: _Link, source: asyncio.StreamReader, sink: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(CHUNK_BYTES):
                if link.stalled:
                    continue  # blackholed: read and drop, never answer, never close
                sink.write(data)
                await sink.drain()

    def _close(self, link: _Link) -> None:
        if link in self._links:
            self._links.discard(link)
            for task in link.tasks:
                task.cancel()
            link.client.close()
            link.upstream.close()

    async def _cut_all(self) -> int:
        links = list(self._links)
        for link in links:
            self._reset(link)
        return len(links)

    def _reset(self, link: _Link) -> None:
        self.cuts += 1
        self._links.discard(link)
        for task in link.tasks:
            task.cancel()
        _reset(link.client)
        _reset(link.upstream)

    async def _stall_all(self) -> int:
        for link in self._links:
            link.stalled = True
        return len(self._links)

    async def _start_cutting(
        self, min_interval: float, max_interval: float, rng: random.Random
    ) -> asyncio.Task[None]:
        return asyncio.create_task(self._keep_cutting(min_interval, max_interval, rng))

    async def _keep_cutting(
        self, min_interval: float, max_interval: float, rng: random.Random
    ) -> None:
        while True:
            await asyncio.sleep(rng.uniform(min_interval, max_interval))
            await self._cut_all()
        for task in list(self._forwarders):
            task.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Closes with RST rather than FIN: SO_LINGER on, with a zero timeout."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
