"""The agent's end of an AgentClient's socket, played by a test: a compromised agent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sandbox_sdk.server.orchestrator.sandbox.agent_client import AgentClient

_WAIT_SECONDS = 10.0


class PeerAgent:
    """The agent's end of an AgentClient's socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)

    async def request(self) -> tuple[dict[str, Any], list[int]]:
        """The next request (one at a time) and the fds that came with it (the caller's)."""
        for _ in range(int(_WAIT_SECONDS / 0.01)):
            try:
                data, ancillary, _, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(16))
                break
            except BlockingIOError:
                await asyncio.sleep(0.01)
        else:
            raise AssertionError("no request came")
        fds: list[int] = []
        for _, _, payload in ancillary:
            usable = len(payload) - len(payload) % 4
            fds += [int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, usable, 4)]
        message: dict[str, Any] = json.loads(data[4 : 4 + int.from_bytes(data[:4], "big")])
        return message, fds

    def say(self, message: object, fds: Sequence[int] = ()) -> None:
        """Sends ``message``, with ``fds`` as SCM_RIGHTS."""
        body = json.dumps(message).encode()
        ancillary = []
        if fds:
            packed = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, packed)]
        self.sock.sendmsg([len(body).to_bytes(4, "big") + body], ancillary)


@contextlib.asynccontextmanager
async def peer_client(
    *, fds_from_agent: bool = True
) -> AsyncIterator[tuple[AgentClient, PeerAgent, list[str]]]:
    """An AgentClient whose agent is a :class:`PeerAgent` (ready already), and the protocol
    violations it reports."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    process = await asyncio.create_subprocess_exec("sleep", "30")
    violations: list[str] = []
    client = AgentClient(process, ours, violations.append, fds_from_agent=fds_from_agent)
    peer = PeerAgent(theirs)
    peer.say({"op": "ready", "pid": 1})
    try:
        yield client, peer, violations
    finally:
        theirs.close()
        process.kill()
        await client.close()


def open_fd_count() -> int:
    """How many fds this process has open."""
    return len(os.listdir("/proc/self/fd"))
