"""TLS for the services: a server's certificate (and client CA for mutual TLS), and the
gateway's client certificate toward orchestrators.

Mutual TLS refuses a peer at the handshake: a client without a certificate, or
with one that does not chain to ``client_ca_file``, never reaches a handler
(it sees UNAVAILABLE).
"""

from __future__ import annotations

from pathlib import Path

import grpc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sandbox_sdk.errors import ConfigError


def read_pem(path: Path, key: str) -> bytes:
    """The bytes of a PEM file, or :class:`ConfigError` naming the setting and the file."""
    try:
        return path.expanduser().read_bytes()
    except OSError as error:
        raise ConfigError(
            f"{key}: cannot read {path}: {error.strerror}; point it at a PEM file"
        ) from error


class TlsConfig(BaseModel):
    """TLS for a server's port; with ``client_ca_file`` it is mutual TLS."""

    model_config = ConfigDict(extra="forbid")

    cert_file: Path = Field(description="PEM server certificate chain.")
    key_file: Path = Field(description="PEM private key of the server certificate.")
    client_ca_file: Path | None = Field(
        default=None, description="PEM CA bundle that client certificates must chain to."
    )
    require_client_cert: bool = Field(
        default=True, description="Refuse clients without a certificate (with client_ca_file)."
    )

    @property
    def authenticates_clients(self) -> bool:
        """Whether only clients with a certificate from ``client_ca_file`` get through."""
        return self.client_ca_file is not None and self.require_client_cert


def server_credentials(tls: TlsConfig, section: str) -> grpc.ServerCredentials:
    """TLS credentials for a port; mutual TLS when a client CA is configured."""
    client_ca = (
        read_pem(tls.client_ca_file, f"{section}.client_ca_file") if tls.client_ca_file else None
    )
    return grpc.ssl_server_credentials(
        [
            (
                read_pem(tls.key_file, f"{section}.key_file"),
                read_pem(tls.cert_file, f"{section}.cert_file"),
            )
        ],
        root_certificates=client_ca,
        require_client_auth=tls.authenticates_clients,
    )


class ClientTlsConfig(BaseModel):
    """The gateway's TLS toward orchestrators; with a certificate it is mutual TLS."""

    model_config = ConfigDict(extra="forbid")

    ca_file: Path = Field(description="PEM CA bundle the orchestrators' certificates chain to.")
    cert_file: Path | None = Field(
        default=None, description="PEM client certificate the orchestrators require (mTLS)."
    )
    key_file: Path | None = Field(default=None, description="PEM key of cert_file.")
    server_name: str | None = Field(
        default=None,
        description="Name to check in the orchestrators' certificates instead of the host.",
    )

    @model_validator(mode="after")
    def _certificate_and_key_together(self) -> ClientTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both for mutual TLS")
        return self


def channel_credentials(tls: ClientTlsConfig, section: str) -> grpc.ChannelCredentials:
    """Channel credentials from :class:`ClientTlsConfig`."""
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(tls.ca_file, f"{section}.ca_file"),
        private_key=read_pem(tls.key_file, f"{section}.key_file") if tls.key_file else None,
        certificate_chain=(
            read_pem(tls.cert_file, f"{section}.cert_file") if tls.cert_file else None
        ),
    )


def channel_options(tls: ClientTlsConfig | None) -> list[tuple[str, str]]:
    """The override of the name checked in the server certificate, when set."""
    if tls is not None and tls.server_name:
        return [("grpc.ssl_target_name_override", tls.server_name)]
    return []
