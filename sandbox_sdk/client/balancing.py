"""Spreading calls over several gateways: the gRPC target and its round-robin policy.

A list of gateways becomes one ``ipv4:``/``ipv6:`` target holding every
gateway's address (grpcio has no static resolver for host names, so names are
resolved once here), and a ``dns:`` target keeps gRPC's DNS resolver, which
finds every address behind the name and re-resolves when connections fail.
Both use gRPC's ``round_robin`` policy: a connection to each gateway, calls
taken in turn by the ready ones, so a dead gateway stops receiving calls as
soon as its connection fails, and retry-safe calls that failed on it are
retried on another (see :mod:`sandbox_sdk.client.retry`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sandbox_sdk.config.settings import ClientSettings
from sandbox_sdk.config.targets import DNS_SCHEME
from sandbox_sdk.errors import ConfigError

log = logging.getLogger(__name__)

ROUND_ROBIN_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


@dataclass(frozen=True)
class ChannelTarget:
    """What the channel is opened with: gRPC's target and the extra channel options."""

    target: str
    options: tuple[tuple[str, Any], ...] = ()


def channel_target(settings: ClientSettings) -> ChannelTarget:
    """The gRPC target for ``settings.target``, round-robin over several gateways."""
    addresses = settings.addresses
    if len(addresses) > 1:
        options: list[tuple[str, Any]] = [("grpc.service_config", ROUND_ROBIN_SERVICE_CONFIG)]
        if settings.tls.enabled and settings.tls.server_name is None:
            # The certificate is checked against the first gateway's name, as a
            # fleet behind one list shares one; tls.server_name overrides it.
            options.append(("grpc.default_authority", addresses[0]))
        return ChannelTarget(static_target(addresses), tuple(options))
    if settings.target.lower().startswith(DNS_SCHEME):
        return ChannelTarget(
            settings.target, (("grpc.service_config", ROUND_ROBIN_SERVICE_CONFIG),)
        )
    return ChannelTarget(settings.target)


def static_target(addresses: Sequence[str]) -> str:
    """One ``ipv4:`` (or ``ipv6:``) target holding every address of every gateway.

    A gateway whose name does not resolve is left out (and logged) while
    another does; with none left, :class:`ConfigError`.
    """
    resolved = [(address, _resolve(address)) for address in addresses]
    usable = [(address, found) for address, found in resolved if found]
    if not usable:
        raise ConfigError(
            f"none of the gateways {', '.join(addresses)} resolves to an address; "
            "check the names in 'target'"
        )
    for family, scheme in ((socket.AF_INET, "ipv4"), (socket.AF_INET6, "ipv6")):
        if all(any(fam == family for fam, _ in found) for _, found in usable):
            endpoints = dict.fromkeys(
                endpoint for _, found in usable for fam, endpoint in found if fam == family
            )
            return f"{scheme}:{','.join(endpoints)}"
    raise ConfigError(
        f"the gateways {', '.join(addresses)} mix IPv4-only and IPv6-only addresses; "
        "gRPC balances over one family: list gateways reachable over the same one"
    )


def _resolve(address: str) -> list[tuple[socket.AddressFamily, str]]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        log.warning("gateway %s left out: its name does not resolve (%s)", address, error)
        return []
    found: list[tuple[socket.AddressFamily, str]] = []
    for family, _, _, _, sockaddr in infos:
        ip = str(sockaddr[0])
        if family == socket.AF_INET6:
            found.append((family, f"[{ipaddress.ip_address(ip.split('%', maxsplit=1)[0])}]:{port}"))
        elif family == socket.AF_INET:
            found.append((family, f"{ip}:{port}"))
    return found
