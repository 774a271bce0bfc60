"""gRPC keepalive: channels notice a dead connection, servers accept their pings.

A connection can die without closing: a peer that lost power, a NAT or proxy
that silently drops it. Without keepalive a call on it with no deadline waits
forever. With these options a channel pings every ``KEEPALIVE_TIME_MS`` and
closes the connection when a ping goes unanswered for ``KEEPALIVE_TIMEOUT_MS``:
its calls then fail with UNAVAILABLE, and resumable streams reconnect.

The servers must allow pings that often, even on connections without calls,
or they answer GOAWAY ``too_many_pings``. They also ping their clients (less
often) so that the streams of a client that vanished are cancelled.

The SDK's channels (``sandbox_sdk/client/channel.py``) use the same client
values; the client package does not import the server's modules.
"""

from __future__ import annotations

KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000
# Servers accept client pings this often; half the clients' interval leaves slack.
MIN_CLIENT_PING_INTERVAL_MS = KEEPALIVE_TIME_MS // 2
SERVER_KEEPALIVE_TIME_MS = 30_000
SERVER_KEEPALIVE_TIMEOUT_MS = 10_000

CHANNEL_KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # gRPC Core waits this long for any ping's answer (60 s by default) and
    # it overrides keepalive_timeout_ms, so it is set to the same value.
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    # Keep pinging while a call waits for data (a quiet stream, a long command).
    ("grpc.http2.max_pings_without_data", 0),
)

SERVER_KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", SERVER_KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", SERVER_KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
)
