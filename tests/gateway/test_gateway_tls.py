"""Mutual TLS on the public port, with a throwaway CA made for the test."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from gateway_callers import StartGateway, StartOrchestrator
from gateway_pki import CertificateAuthority, Issued

from sandbox_sdk.api.v1 import gateway_service_pb2_grpc, requests_pb2
from sandbox_sdk.server.gateway.api_keys import Scope
from sandbox_sdk.server.gateway.config import TlsConfig


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Issued]:
    ca = CertificateAuthority("test-ca")
    ca.issue("localhost", server=True).write(tmp_path, "server")
    ca.write(tmp_path / "ca.crt")
    return {"client": ca.issue("client"), "ca": Issued(b"", ca.cert_pem)}


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
    ca_pem = pki["ca"].cert_pem

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _list(gateway.port, grpc.ssl_channel_credentials(root_certificates=ca_pem), key)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert orchestrator.state.calls["ListEnvironments"] == 0

    client_key, client_cert = pki["client"].key_pem, pki["client"].cert_pem
    await _list(
        gateway.port,
        grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=client_key, certificate_chain=client_cert
        ),
        key,
    )
    assert orchestrator.state.calls["ListEnvironments"] == 1
