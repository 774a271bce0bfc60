"""A TCP server the port-forwarding tests run inside an environment (standard library only).

``python3 port_forward_server.py MODE PORT`` listens on 127.0.0.1:PORT, writes
``ready`` on its stdout and closes it, then serves each connection in a thread:

* ``echo``: sends back what it reads; closes at end of file.
* ``digest``: reads to end of file, then answers ``<bytes> <sha256 hex>`` and
  closes: the client's half-close must reach it, and its answer come back after.
* ``flood``: writes without end and never reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import threading
from collections.abc import Callable

_CHUNK = 65536


def echo(connection: socket.socket) -> None:
    while data := connection.recv(_CHUNK):
        connection.sendall(data)


def digest(connection: socket.socket) -> None:
    hashed, count = hashlib.sha256(), 0
    while data := connection.recv(_CHUNK):
        hashed.update(data)
        count += len(data)
    connection.sendall(f"{count} {hashed.hexdigest()}".encode())


def flood(connection: socket.socket) -> None:
    block = b"x" * _CHUNK
    while True:
        connection.sendall(block)


def serve(handler: Callable[[socket.socket], None], connection: socket.socket) -> None:
    with connection, contextlib.suppress(OSError):
        handler(connection)


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    handler = {"echo": echo, "digest": digest, "flood": flood}[mode]
    listener = socket.create_server(("127.0.0.1", port))
    os.write(1, b"ready\n")
    os.close(1)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve, args=(handler, connection), daemon=True).start()


if __name__ == "__main__":
    main()
