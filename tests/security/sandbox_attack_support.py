"""What the sandbox attack tests share: the sandbox tests' helpers, and a test host.

The sandbox helpers live in ``tests/sandbox/sandbox_support.py``; this module
puts that directory on the path so these suites run on their own too.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sandbox"))

from sandbox_support import (
    HAS_ISOLATION,
    TENANT,
    Run,
    create,
    eventually,
    fast_settings,
    make_spec,
    needs_isolation,
    run,
    running_manager,
    under_gvisor,
)

__all__ = [
    "HAS_ISOLATION",
    "TENANT",
    "OutsideHost",
    "Run",
    "create",
    "eventually",
    "fast_settings",
    "make_spec",
    "needs_isolation",
    "outside_host",
    "python_in_sandbox",
    "run",
    "running_manager",
    "under_gvisor",
]


def python_in_sandbox(source: str) -> list[str]:
    """argv running ``source`` (dedented) with the sandbox's python3."""
    return ["python3", "-c", textwrap.dedent(source)]


@dataclass(frozen=True)
class OutsideHost:
    """A TCP server in a network namespace of the test's own, reached over a veth pair."""

    address: str
    port: int


_SERVER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('{address}', {port})); s.listen(64)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(b'hello from the test host'); c.close()\n"
)


@contextlib.contextmanager
def outside_host(subnet: int = 77, port: int = 8080) -> Iterator[OutsideHost]:
    """A throwaway host at 10.211.<subnet>.2 in its own namespace (removed after).

    Traffic goes only to this machine's own namespaces.
    """
    if shutil.which("ip") is None:
        raise RuntimeError("the test host needs iproute2's ip")
    name = f"sbxtest{secrets.token_hex(3)}"
    host_side, peer_side = f"{name}a"[:15], f"{name}b"[:15]
    address = f"10.211.{subnet}.2"
    commands = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", host_side, "type", "veth", "peer", "name", peer_side],
        ["ip", "link", "set", peer_side, "netns", name],
        ["ip", "addr", "add", f"10.211.{subnet}.1/30", "dev", host_side],
        ["ip", "link", "set", host_side, "up"],
        ["ip", "-n", name, "addr", "add", f"{address}/30", "dev", peer_side],
        ["ip", "-n", name, "link", "set", peer_side, "up"],
        ["ip", "-n", name, "link", "set", "lo", "up"],
    ]
    server = None
    try:
        for command in commands:
            subprocess.run(command, check=True, capture_output=True, timeout=10)
        source = _SERVER.format(address=address, port=port)
        server = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", source])
        for _ in range(200):
            probe = subprocess.run(
                ["ip", "netns", "exec", name, "ss", "-ltn", f"sport = :{port}"],
                capture_output=True,
                text=True,
                check=False,
            )
            if f":{port}" in probe.stdout:
                break
            subprocess.run(["sleep", "0.05"], check=False)
        yield OutsideHost(address, port)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", host_side], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
