"""Building the gRPC channel (sync or aio) from the settings."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from sandbox_sdk.auth.tls import channel_credentials, tls_channel_options
from sandbox_sdk.client.balancing import channel_target
from sandbox_sdk.config.settings import ClientSettings

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# A connection that dies without closing (a dead peer, a proxy or NAT dropping
# it) is noticed by an unanswered ping: the channel pings every 10 s and gives
# the connection up after 5 s without an answer. Calls on it then fail with
# UNAVAILABLE instead of waiting forever, and resumable streams reconnect. The
# servers accept pings this often (sandbox_sdk/server/keepalive.py).
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000
KEEPALIVE_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # gRPC Core waits this long for any ping's answer (60 s by default) and
    # it overrides keepalive_timeout_ms, so it is set to the same value.
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    # Keep pinging while a call waits for data (a quiet stream, a long command).
    ("grpc.http2.max_pings_without_data", 0),
)

# Reconnect quickly after a gateway restart so resumed streams do not wait out
# gRPC's default two-minute reconnect backoff ceiling.
_BASE_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.primary_user_agent", "sandbox-sdk-python"),
    *KEEPALIVE_OPTIONS,
)


def channel_options(settings: ClientSettings) -> list[tuple[str, Any]]:
    """The channel arguments the SDK uses."""
    return [*_BASE_OPTIONS, *tls_channel_options(settings.tls)]


def open_channel(settings: ClientSettings) -> grpc.Channel:
    """A synchronous channel to ``settings.target``, TLS when configured.

    Several gateways (a list or a ``dns:`` target) are used round-robin.
    """
    target = channel_target(settings)
    options = [*channel_options(settings), *target.options]
    if settings.tls.enabled:
        return grpc.secure_channel(target.target, channel_credentials(settings.tls), options)
    return grpc.insecure_channel(target.target, options)


def open_aio_channel(settings: ClientSettings) -> grpc.aio.Channel:
    """An asyncio channel to ``settings.target``, TLS when configured.

    Several gateways (a list or a ``dns:`` target) are used round-robin.
    """
    target = channel_target(settings)
    options = [*channel_options(settings), *target.options]
    if settings.tls.enabled:
        return grpc.aio.secure_channel(target.target, channel_credentials(settings.tls), options)
    return grpc.aio.insecure_channel(target.target, options)
