"""Gateway targets: one address, a list of addresses, or a gRPC target with a scheme.

A list (``targets: [a:50051, b:50051]`` in YAML, ``SANDBOX_TARGET=a:50051,b:50051``
in the environment, or a list passed as ``target``) is kept as one string of
``host:port`` items separated by commas; the channel spreads calls over them
round-robin (see :mod:`sandbox_sdk.client.balancing`). A target with a gRPC
scheme (``dns:///name:port``, ``ipv4:...``, ``unix:...``) is passed to gRPC as is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# gRPC name-resolver schemes this SDK passes through untouched; a plain
# ``host:port`` also has a colon, so a scheme is only one of these prefixes.
GRPC_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")
DNS_SCHEME = "dns:"


def has_scheme(target: str) -> bool:
    """Whether ``target`` names its gRPC resolver (``dns:``, ``unix:``, ...)."""
    return target.lower().startswith(GRPC_SCHEMES)


def split_addresses(target: str) -> tuple[str, ...]:
    """The ``host:port`` items of a list target; ``(target,)`` for any other target."""
    if has_scheme(target):
        return (target,)
    return tuple(item.strip() for item in target.split(","))


def join_addresses(addresses: Iterable[Any]) -> str:
    """One target string for a list of ``host:port`` addresses."""
    return ",".join(str(address).strip() for address in addresses)


def normalize_target(target: str) -> str:
    """``target`` without stray spaces; a list's items checked to be ``host:port``.

    Raises ``ValueError`` (reported by the settings' validation) for an empty
    item, an item with a scheme, or an item without a port.
    """
    target = target.strip()
    if has_scheme(target) or "," not in target:
        return target
    items = split_addresses(target)
    for item in items:
        if not item:
            raise ValueError(f"the gateway list {target!r} has an empty item; use a:50051,b:50051")
        if has_scheme(item):
            raise ValueError(
                f"{item!r} in the gateway list {target!r}: a list takes host:port items only "
                "(for DNS use one target such as dns:///gateway.example:50051)"
            )
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{item!r} in the gateway list {target!r} is not host:port")
    return join_addresses(items)


def merge_targets_key(data: Mapping[str, Any]) -> dict[str, Any]:
    """Settings data with the ``targets`` spelling moved to ``target``.

    Raises ``ValueError`` when both are given, since which one wins would be a guess.
    """
    merged = dict(data)
    targets = merged.pop("targets")
    if "target" in merged and merged["target"] is not None:
        raise ValueError("set either 'target' or 'targets', not both")
    merged["target"] = targets
    return merged
