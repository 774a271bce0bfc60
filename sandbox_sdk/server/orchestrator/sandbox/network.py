"""Egress networking: an environment's own network namespace, reaching out through slirp4netns.

An environment with ``NETWORK_POLICY_EGRESS`` keeps bubblewrap's private
network namespace. Once its agent runs, the orchestrator

1. loads a firewall into that namespace (``nft``, entered with ``nsenter``;
   the rules are rendered from parsed ``ipaddress`` networks, never from
   request text), so no packet leaves before the rules are in force: DNS to
   slirp's resolver is allowed, slirp's gateway (the host) is rejected, the
   operator's deny list, the host's own addresses and the environment's deny
   list are rejected, and with an allow list everything else is too;
2. starts ``slirp4netns`` on that namespace: a user-mode TCP/IP stack that
   turns the environment's packets into ordinary sockets of its own, with the
   host's loopback disabled (``--disable-host-loopback``) and slirp4netns
   confining itself (``--enable-sandbox``: an empty root and no capabilities;
   ``--enable-seccomp``).

The commands inside have no capability in their namespaces (bubblewrap drops
them, and the seccomp filter refuses new namespaces), so they cannot change
the firewall or the interface. This is what rootless Podman does, plus the
firewall.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import psutil

from sandbox_sdk.server.orchestrator.sandbox.host_env import HOST_PATH, host_process_env

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SLIRP_GATEWAY = ipaddress.ip_address("10.0.2.2")
SLIRP_DNS = ipaddress.ip_address("10.0.2.3")
RESOLV_CONF = f"nameserver {SLIRP_DNS}\n"
_READY_TIMEOUT_SECONDS = 10.0
_STOP_TIMEOUT_SECONDS = 5.0
_INFO_MAX_BYTES = 4096
_TABLE = "sandbox_egress"

# What no environment reaches unless the operator says otherwise: this host's
# networks, private and shared ranges (a cloud's metadata service among them).
DEFAULT_DENIED_CIDRS: tuple[str, ...] = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)


class NetworkSetupError(Exception):
    """The environment's network could not be set up; the message says why."""


@dataclass(frozen=True)
class EgressRules:
    """Where an environment's connections may go.

    ``denied`` always wins; a non-empty ``allowed`` admits only those networks.
    """

    allowed: tuple[Network, ...] = ()
    denied: tuple[Network, ...] = ()


def parse_cidrs(values: Iterable[str]) -> tuple[Network, ...]:
    """The networks named by ``values``; raises ValueError naming the first bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError as error:
            raise ValueError(f"{value[:60]!r} is not a CIDR block ({error})") from None
    return tuple(networks)


def host_addresses() -> tuple[Network, ...]:
    """This host's own addresses, which slirp4netns would otherwise reach."""
    networks: list[Network] = []
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            with contextlib.suppress(ValueError):
                ip = ipaddress.ip_address(address.address.split("%")[0])
                networks.append(ipaddress.ip_network(ip))
    return tuple(networks)


def nft_ruleset(rules: EgressRules) -> str:
    """The nftables program for the environment's namespace (only rendered addresses)."""
    lines = [
        f"table inet {_TABLE} {{",
        "  chain output {",
        "    type filter hook output priority 0; policy accept;",
        '    oifname "lo" accept',
        f"    ip daddr {SLIRP_DNS} udp dport 53 accept",
        f"    ip daddr {SLIRP_DNS} tcp dport 53 accept",
        f"    ip daddr {SLIRP_GATEWAY} reject with icmpx type admin-prohibited",
    ]
    lines += _verdicts(rules.denied, "reject with icmpx type admin-prohibited")
    if rules.allowed:
        lines += _verdicts(rules.allowed, "accept")
        lines.append("    reject with icmpx type admin-prohibited")
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def _verdicts(networks: Sequence[Network], verdict: str) -> list[str]:
    lines = []
    for family, version in (("ip", 4), ("ip6", 6)):
        chosen = sorted({str(n) for n in networks if n.version == version})
        if chosen:
            lines.append(f"    {family} daddr {{ {', '.join(chosen)} }} {verdict}")
    return lines


def bwrap_info_pid(data: bytes) -> int:
    """The sandbox's first process as bubblewrap's ``--info-fd`` reports it."""
    try:
        pid = json.loads(data)["child-pid"]
    except (ValueError, KeyError, TypeError) as error:
        raise NetworkSetupError(f"bubblewrap did not report its child ({error})") from error
    if type(pid) is not int or pid <= 1:
        raise NetworkSetupError("bubblewrap reported no usable child pid")
    return pid


def tools_missing() -> list[str]:
    """The programs egress networking needs that this host lacks (Debian packages)."""
    needed = {"slirp4netns": "slirp4netns", "nft": "nftables", "nsenter": "util-linux"}
    return [
        package for tool, package in needed.items() if shutil.which(tool, path=HOST_PATH) is None
    ]


class EgressNetwork:
    """slirp4netns serving one network namespace; :meth:`close` stops it."""

    def __init__(self, process: asyncio.subprocess.Process, exit_write: int) -> None:
        self._process = process
        self._exit_write = exit_write

    @property
    def pid(self) -> int:
        """slirp4netns's pid (it belongs in the environment's cgroup)."""
        return self._process.pid

    @classmethod
    async def attach(cls, info_read: int, rules: EgressRules, mtu: int) -> EgressNetwork:
        """Firewalls and connects the namespace of the sandbox bubblewrap reported on
        ``info_read`` (which this closes); raises :class:`NetworkSetupError`."""
        pid = bwrap_info_pid(await _read_until(info_read, _is_json))
        netns = f"/proc/{pid}/ns/net"
        await _apply_firewall(netns, nft_ruleset(rules))
        return await cls._start_slirp(netns, mtu)

    @classmethod
    async def _start_slirp(cls, netns: str, mtu: int) -> EgressNetwork:
        ready_read, ready_write = os.pipe()
        exit_read, exit_write = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                "slirp4netns",
                "--configure",
                f"--mtu={mtu}",
                "--disable-host-loopback",
                "--enable-sandbox",
                "--enable-seccomp",
                f"--ready-fd={ready_write}",
                f"--exit-fd={exit_read}",
                "--netns-type=path",
                netns,
                "tap0",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=host_process_env(),
                pass_fds=[ready_write, exit_read],
                cwd="/",
            )
        except OSError as error:
            for fd in (ready_read, ready_write, exit_read, exit_write):
                os.close(fd)
            raise NetworkSetupError(f"cannot start slirp4netns ({error})") from error
        os.close(ready_write)
        os.close(exit_read)
        network = cls(process, exit_write)
        try:
            if not await _read_until(ready_read, bool):
                raise NetworkSetupError(f"slirp4netns failed: {await network._stderr()}")
        except BaseException:
            await network.close()
            raise
        return network

    async def _stderr(self) -> str:
        with contextlib.suppress(TimeoutError, OSError):
            stream = self._process.stderr
            if stream is not None:
                data = await asyncio.wait_for(stream.read(2000), _STOP_TIMEOUT_SECONDS)
                return data.decode(errors="replace").strip()
        return ""

    async def close(self) -> None:
        """Stops slirp4netns (closing its exit fd) and waits for it."""
        if self._exit_write >= 0:
            os.close(self._exit_write)
            self._exit_write = -1
        try:
            await asyncio.wait_for(self._process.wait(), _STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()


async def _apply_firewall(netns: str, ruleset: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "nsenter",
        f"--net={netns}",
        "--",
        "nft",
        "-f",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=host_process_env(),
        cwd="/",
    )
    _, stderr = await process.communicate(ruleset.encode())
    if process.returncode != 0:
        detail = stderr.decode(errors="replace").strip()[:500]
        raise NetworkSetupError(f"cannot load the egress firewall ({detail})")


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


async def _read_until(fd: int, complete: Callable[[bytes], bool]) -> bytes:
    """What the pipe ``fd`` holds once ``complete`` says so, or at end of file (an
    empty result: the writer died first); closes ``fd``."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    received = bytearray()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, _INFO_MAX_BYTES)
        except BlockingIOError:
            return
        received.extend(data)
        finished = complete(bytes(received)) or len(received) >= _INFO_MAX_BYTES
        if not data or finished:
            if not finished:
                received.clear()
            loop.remove_reader(fd)
            if not done.done():
                done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(done, _READY_TIMEOUT_SECONDS)
    except TimeoutError as error:
        raise NetworkSetupError("the sandbox's network did not come up in time") from error
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return bytes(received)
