"""Keepalive on both sides agrees: every channel pings, and every server accepts its pings.

A server that receives pings more often than it permits answers GOAWAY
``too_many_pings`` and drops the connection with every call on it; a channel
without keepalive waits forever on a connection that died without closing.
The chaos tests (tests/chaos/test_chaos_proxy.py) show the behaviour; this
checks the numbers, which live in two places (the SDK does not import the
server's modules).
"""

from __future__ import annotations

from typing import Any

import pytest

from sandbox_sdk.client import channel
from sandbox_sdk.config.settings import ClientSettings
from sandbox_sdk.server import keepalive
from sandbox_sdk.server.gateway import orchestrators, server
from sandbox_sdk.server.orchestrator import app

CHANNELS = {
    "sdk": channel.channel_options(ClientSettings(target="127.0.0.1:1")),
    "gateway to orchestrators": orchestrators.CHANNEL_OPTIONS,
}
SERVERS = {"gateway": server.SERVER_OPTIONS, "orchestrator": app.SERVER_OPTIONS}


def _option(options: list[tuple[str, Any]], name: str) -> Any:
    values = [value for key, value in options if key == name]
    assert len(values) == 1, f"{name} is set {len(values)} times"
    return values[0]


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_each_channel_gives_a_silent_connection_up_within_seconds(name: str) -> None:
    options = list(CHANNELS[name])
    ping_every = _option(options, "grpc.keepalive_time_ms")
    timeout = _option(options, "grpc.keepalive_timeout_ms")
    # gRPC Core's ping timeout overrides the keepalive timeout; it must not be longer.
    assert _option(options, "grpc.http2.ping_timeout_ms") <= timeout
    assert ping_every + timeout <= 20_000
    assert _option(options, "grpc.http2.max_pings_without_data") == 0
    assert _option(options, "grpc.keepalive_permit_without_calls") == 1


@pytest.mark.parametrize("server_name", sorted(SERVERS))
@pytest.mark.parametrize("channel_name", sorted(CHANNELS))
def test_each_server_accepts_the_pings_of_each_channel(server_name: str, channel_name: str) -> None:
    server_options = list(SERVERS[server_name])
    ping_every = _option(list(CHANNELS[channel_name]), "grpc.keepalive_time_ms")
    permitted = _option(server_options, "grpc.http2.min_recv_ping_interval_without_data_ms")
    assert permitted <= ping_every
    assert _option(server_options, "grpc.keepalive_permit_without_calls") == 1


def test_the_sdk_and_the_gateway_ping_alike() -> None:
    assert channel.KEEPALIVE_TIME_MS == keepalive.KEEPALIVE_TIME_MS
    assert channel.KEEPALIVE_TIMEOUT_MS == keepalive.KEEPALIVE_TIMEOUT_MS
