"""Building the gRPC channel (sync or aio) from the settings."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from sandbox_sdk.auth.tls import channel_credentials, tls_channel_options
from sandbox_sdk.config.settings import ClientSettings

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Reconnect quickly after a gateway restart so resumed streams do not wait out
# gRPC's default two-minute reconnect backoff ceiling.
_BASE_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.primary_user_agent", "sandbox-sdk-python"),
)


def channel_options(settings: ClientSettings) -> list[tuple[str, Any]]:
    """The channel arguments the SDK uses."""
    return [*_BASE_OPTIONS, *tls_channel_options(settings.tls)]


def open_channel(settings: ClientSettings) -> grpc.Channel:
    """A synchronous channel to ``settings.target``, TLS when configured."""
    options = channel_options(settings)
    if settings.tls.enabled:
        return grpc.secure_channel(settings.target, channel_credentials(settings.tls), options)
    return grpc.insecure_channel(settings.target, options)


def open_aio_channel(settings: ClientSettings) -> grpc.aio.Channel:
    """An asyncio channel to ``settings.target``, TLS when configured."""
    options = channel_options(settings)
    if settings.tls.enabled:
        return grpc.aio.secure_channel(settings.target, channel_credentials(settings.tls), options)
    return grpc.aio.insecure_channel(settings.target, options)
