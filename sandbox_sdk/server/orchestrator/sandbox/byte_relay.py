"""One TCP connection carried over a stream of messages, both ways, on the event loop.

:func:`relay` writes the chunks of an incoming stream into the connection and
yields what the connection sends, with no thread and no unbounded buffer:

* toward the connection, the next chunk is read from the stream only once the
  previous one is in the socket's buffer (``drain``), so a server that never
  reads holds the client back through the stream's own flow control;
* toward the stream, the connection is read only as fast as the consumer asks
  for the next chunk; the transport stops reading past ``2 * chunk_bytes``.

The incoming stream ending half-closes the connection (``shutdown(SHUT_WR)``):
the server reads end of file and may go on writing. The connection's end of
file ends the relay. Whatever the server does, the caller ending the relay
(closing the generator) closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Callable

CHUNK_BYTES = 64 * 1024


async def relay(
    connection: socket.socket,
    incoming: AsyncIterator[bytes],
    *,
    on_sent: Callable[[int], None],
    on_received: Callable[[int], None],
    chunk_bytes: int = CHUNK_BYTES,
) -> AsyncGenerator[bytes, None]:
    """Yields the connection's bytes until its end of file; meanwhile sends ``incoming``.

    ``on_sent(n)`` and ``on_received(n)`` count the bytes each way as they pass.
    Raises what ``incoming`` raises (as soon as it does), and ConnectionError
    when the server resets the connection. Owns ``connection`` and closes it.
    """
    try:
        reader, writer = await asyncio.open_connection(sock=connection, limit=chunk_bytes)
    except BaseException:
        connection.close()
        raise
    sending = asyncio.create_task(_send_all(incoming, writer, on_sent))
    try:
        while True:
            chunk = await _next_chunk(reader, sending, chunk_bytes)
            if not chunk:
                return
            on_received(len(chunk))
            yield chunk
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        writer.transport.abort()


async def _send_all(
    incoming: AsyncIterator[bytes], writer: asyncio.StreamWriter, on_sent: Callable[[int], None]
) -> None:
    """Writes every chunk, waiting for room after each; then half-closes.

    A connection that can no longer be written (the server closed or reset it)
    ends the sending quietly: reading the connection tells how it ended.
    """
    async for chunk in incoming:
        writer.write(chunk)
        try:
            await writer.drain()
        except ConnectionError:
            return
        on_sent(len(chunk))
    with contextlib.suppress(OSError):
        writer.write_eof()


async def _next_chunk(
    reader: asyncio.StreamReader, sending: asyncio.Task[None], chunk_bytes: int
) -> bytes:
    """The connection's next bytes (empty at its end), or what the sending raised."""
    if sending.done():
        _raise_failure(sending)
        return await reader.read(chunk_bytes)
    read = asyncio.ensure_future(reader.read(chunk_bytes))
    try:
        await asyncio.wait((read, sending), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        read.cancel()
        raise
    if not read.done():  # the sending ended first: failed, or the client half-closed
        try:
            _raise_failure(sending)
        except BaseException:
            read.cancel()
            raise
    return await read


def _raise_failure(sending: asyncio.Task[None]) -> None:
    error = None if sending.cancelled() else sending.exception()
    if error is not None:
        raise error
