"""Channel credentials for TLS and mutual TLS from :class:`TlsSettings`."""

from __future__ import annotations

from pathlib import Path

import grpc

from sandbox_sdk.config.settings import TlsSettings
from sandbox_sdk.errors import ConfigError


def _read(path: Path | None, key: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.expanduser().read_bytes()
    except OSError as error:
        raise ConfigError(
            f"tls.{key}: cannot read {path}: {error.strerror}; point it at a PEM file"
        ) from error


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials:
    """SSL credentials: ``root_ca`` (else system roots), plus the client pair for mTLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.root_ca, "root_ca"),
        private_key=_read(tls.client_key, "client_key"),
        certificate_chain=_read(tls.client_cert, "client_cert"),
    )


def tls_channel_options(tls: TlsSettings) -> list[tuple[str, str]]:
    """The override of the name checked against the server certificate, if set."""
    if tls.server_name:
        return [("grpc.ssl_target_name_override", tls.server_name)]
    return []
