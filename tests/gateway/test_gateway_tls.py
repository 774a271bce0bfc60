"""Mutual TLS on the public port, with a throwaway CA made for the test."""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gateway_callers import StartGateway, StartOrchestrator

from sandbox.v1 import gateway_service_pb2_grpc, requests_pb2
from sandbox_sdk.server.gateway.api_keys import Scope
from sandbox_sdk.server.gateway.config import TlsConfig

Issued = tuple[bytes, bytes]  # PEM key, PEM certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    common_name: str,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Name] | None = None,
    *,
    server: bool = False,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    signer_key, issuer_name = issuer or (key, _name(common_name))
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return key, builder.sign(signer_key, hashes.SHA256())


def _pem(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> Issued:
    return (
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert.public_bytes(serialization.Encoding.PEM),
    )


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Issued]:
    ca_key, ca_cert = _issue("test-ca")
    ca = (ca_key, ca_cert.subject)
    server = _pem(*_issue("localhost", ca, server=True))
    client = _pem(*_issue("client", ca))
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "server.key").write_bytes(server[0])
    (tmp_path / "server.crt").write_bytes(server[1])
    (tmp_path / "ca.crt").write_bytes(ca_pem)
    return {"server": server, "client": client, "ca": (b"", ca_pem)}


async def _list(port: int, credentials: grpc.ChannelCredentials, key: str) -> None:
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )
    try:
        await gateway_service_pb2_grpc.GatewayServiceStub(channel).ListEnvironments(
            requests_pb2.ListEnvironmentsRequest(),
            metadata=(("authorization", f"Bearer {key}"),),
            timeout=5,
        )
    finally:
        await channel.close()


async def test_mutual_tls_refuses_clients_without_a_certificate(
    start_orchestrator: StartOrchestrator,
    start_gateway: StartGateway,
    pki: dict[str, Issued],
    tmp_path: Path,
) -> None:
    orchestrator = await start_orchestrator("o1")
    gateway = await start_gateway(
        orchestrator,
        tls=TlsConfig(
            cert_file=tmp_path / "server.crt",
            key_file=tmp_path / "server.key",
            client_ca_file=tmp_path / "ca.crt",
        ),
    )
    key = gateway.keys.create("team-a", [Scope.READ]).secret
    ca_pem = pki["ca"][1]

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _list(gateway.port, grpc.ssl_channel_credentials(root_certificates=ca_pem), key)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert orchestrator.state.calls["ListEnvironments"] == 0

    client_key, client_cert = pki["client"]
    await _list(
        gateway.port,
        grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=client_key, certificate_chain=client_cert
        ),
        key,
    )
    assert orchestrator.state.calls["ListEnvironments"] == 1
