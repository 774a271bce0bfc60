"""Issue 9, class 6: an orchestrator never serves callers it has not authenticated.

The attacker reaches an orchestrator's port directly, skipping the gateway, and
names any tenant in ``x-sandbox-tenant``. The orchestrator must refuse to start
without internal authentication (a token of the gateway, or mutual TLS), refuse
every call without it (UNAUTHENTICATED, or the TLS handshake), and never serve
such a call as ``default`` or as the tenant it names.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from e2e_support import BIN_DIR, EmbeddedStack, free_port
from gateway_pki import SERVER_NAME, CertificateAuthority
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from sandbox_sdk.api.v1 import (
    gateway_service_pb2_grpc,
    orchestrator_service_pb2,
    orchestrator_service_pb2_grpc,
    requests_pb2,
)
from sandbox_sdk.errors import ConfigError
from sandbox_sdk.server.gateway.api_keys import Scope
from sandbox_sdk.server.gateway.config import GatewayConfig, OrchestratorEndpoint
from sandbox_sdk.server.gateway.server import GatewayServer
from sandbox_sdk.server.orchestrator.app import OrchestratorApp
from sandbox_sdk.server.orchestrator.config import OrchestratorConfig
from sandbox_sdk.server.tls import ClientTlsConfig, TlsConfig

TENANT = "x-sandbox-tenant"
VICTIM = "victim"
OrchestratorStub = orchestrator_service_pb2_grpc.OrchestratorServiceStub

# -- refusing to start -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"internal_token": ""},
        {"internal_token": None},
        {"listen": "0.0.0.0:50061"},
        {"tls": {"cert_file": "s.crt", "key_file": "s.key"}},  # TLS alone authenticates no one
        {
            "tls": {
                "cert_file": "s.crt",
                "key_file": "s.key",
                "client_ca_file": "ca.crt",
                "require_client_cert": False,
            }
        },
    ],
    ids=["nothing", "empty-token", "null-token", "public-listen", "tls-only", "optional-cert"],
)
def test_an_orchestrator_without_internal_authentication_does_not_configure(
    tmp_path: Path, settings: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError) as caught:
        OrchestratorConfig.model_validate({"data_dir": tmp_path, **settings})
    message = str(caught.value)
    for remedy in ("internal_token", "client_ca_file", "insecure_dev_loopback_only"):
        assert remedy in message


@pytest.mark.parametrize("token", ["change-me", "x" * 31, "s3cret"])
def test_a_guessable_token_is_refused(tmp_path: Path, token: str) -> None:
    with pytest.raises(ValidationError, match="at least 32"):
        OrchestratorConfig(data_dir=tmp_path, internal_token=token)


@pytest.mark.parametrize(
    "listen",
    ["0.0.0.0:0", "[::]:0", "10.0.0.5:0", "localhost:0", "127.0.0.1.nip.io:0", ":0", "0:0"],
)
def test_the_development_flag_binds_only_to_loopback(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ValidationError, match=r"binds only to 127\.0\.0\.1 or \[::1\]"):
        OrchestratorConfig(data_dir=tmp_path, listen=listen, insecure_dev_loopback_only=True)


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0"])
def test_the_development_flag_accepts_loopback(tmp_path: Path, listen: str) -> None:
    config = OrchestratorConfig(data_dir=tmp_path, listen=listen, insecure_dev_loopback_only=True)
    assert config.internal_token is None


async def test_start_checks_again_whatever_built_the_config(tmp_path: Path) -> None:
    unchecked = OrchestratorConfig.model_construct(
        data_dir=tmp_path / "o", listen="127.0.0.1:0", internal_token=None, tls=None
    )
    with pytest.raises(ConfigError, match="no internal authentication"):
        await OrchestratorApp.start(unchecked)
    development = OrchestratorConfig(
        data_dir=tmp_path / "o", listen="127.0.0.1:0", insecure_dev_loopback_only=True
    )
    with pytest.raises(ConfigError, match="binds only to"):
        await OrchestratorApp.start(development, "0.0.0.0:0")
    assert not (tmp_path / "o").exists(), "nothing may be set up before the check"


@pytest.mark.parametrize(
    "section",
    [
        {},
        {"internal_token": "change-me"},
        {"listen": "0.0.0.0:{port}", "insecure_dev_loopback_only": True},
    ],
    ids=["no-token", "weak-token", "public-development"],
)
def test_sandbox_orchestrator_refuses_to_start_and_says_what_to_set(
    tmp_path: Path, section: dict[str, Any]
) -> None:
    port = free_port()
    orchestrator = {
        "data_dir": str(tmp_path / "orchestrator"),
        "listen": f"127.0.0.1:{port}",
        **{k: v.format(port=port) if isinstance(v, str) else v for k, v in section.items()},
    }
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({"orchestrator": orchestrator}))
    finished = subprocess.run(
        [str(BIN_DIR / "sandbox-orchestrator"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode != 0
    output = finished.stdout + finished.stderr
    assert "internal_token" in output
    assert "Traceback" not in output
    assert not (tmp_path / "orchestrator").exists()


# -- refusing calls: the embedded server's own orchestrator port, with its token ------------


@pytest.fixture
def orchestrator_port(embedded: EmbeddedStack) -> Iterator[OrchestratorStub]:
    """A raw client of the embedded server's orchestrator, reached past the gateway."""
    channel = grpc.insecure_channel(embedded.server.orchestrator.address)
    yield OrchestratorStub(channel)
    channel.close()


def _forged(token: str) -> list[tuple[tuple[str, str], ...]]:
    return [
        (),
        ((TENANT, VICTIM),),
        ((TENANT, "default"),),
        (("authorization", "Bearer wrong"), (TENANT, VICTIM)),
        (("authorization", f"Bearer {token}x"), (TENANT, VICTIM)),
        (("authorization", f"Bearer {token[:-1]}"), (TENANT, VICTIM)),
        (("authorization", token), (TENANT, VICTIM)),
        (("authorization", f"bearer {token}"), (TENANT, VICTIM)),
        (("authorization", f"Bearer  {token}"), (TENANT, VICTIM)),
        (("authorization", "Bearer "), (TENANT, VICTIM)),
        (("authorization", "Bearer wrong"), ("authorization", f"Bearer {token}"), (TENANT, VICTIM)),
    ]


def _calls(stub: OrchestratorStub) -> dict[str, Any]:
    return {
        "CreateEnvironment": lambda m: stub.CreateEnvironment(
            requests_pb2.CreateEnvironmentRequest(), metadata=m, timeout=30
        ),
        "ListEnvironments": lambda m: stub.ListEnvironments(
            requests_pb2.ListEnvironmentsRequest(show_terminated=True), metadata=m, timeout=30
        ),
        "GetCapacity": lambda m: stub.GetCapacity(
            orchestrator_service_pb2.GetCapacityRequest(), metadata=m, timeout=30
        ),
        "ListModels": lambda m: stub.ListModels(
            requests_pb2.ListModelsRequest(), metadata=m, timeout=30
        ),
        "ExecCommand": lambda m: list(
            stub.ExecCommand(
                requests_pb2.ExecCommandRequest(
                    environment_id="env-o1-0000000000000000", argv=["id"]
                ),
                metadata=m,
                timeout=30,
            )
        ),
        "StreamExperimentEvents": lambda m: list(
            stub.StreamExperimentEvents(
                requests_pb2.StreamExperimentEventsRequest(experiment_id="exp-o1-0000000000000000"),
                metadata=m,
                timeout=30,
            )
        ),
    }


@pytest.mark.parametrize(
    "method",
    [
        "CreateEnvironment",
        "ListEnvironments",
        "GetCapacity",
        "ListModels",
        "ExecCommand",
        "StreamExperimentEvents",
    ],
)
def test_calls_without_the_gateways_token_are_unauthenticated(
    embedded: EmbeddedStack,
    orchestrator_port: OrchestratorStub,
    method: str,
) -> None:
    token = embedded.server.orchestrator.config.internal_token
    assert token
    call = _calls(orchestrator_port)[method]
    for metadata in _forged(token):
        with pytest.raises(grpc.RpcError) as caught:
            call(metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert "internal token" in caught.value.details()
    # Nothing was created or served for the tenants the attacker named.
    real = (("authorization", f"Bearer {token}"),)
    for tenant in (VICTIM, "default"):
        listed = orchestrator_port.ListEnvironments(
            requests_pb2.ListEnvironmentsRequest(show_terminated=True),
            metadata=(*real, (TENANT, tenant)),
            timeout=30,
        )
        assert list(listed.environments) == []


def test_health_is_the_only_thing_served_without_the_token(
    embedded: EmbeddedStack,
) -> None:
    with grpc.insecure_channel(embedded.server.orchestrator.address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


# -- mutual TLS between the gateway and the orchestrator ------------------------------------


class Pki:
    """A CA for the deployment, a server certificate, the gateway's client certificate,
    and a rogue client certificate from another CA."""

    def __init__(self, directory: Path) -> None:
        ca = CertificateAuthority("deployment-ca")
        rogue_ca = CertificateAuthority("rogue-ca")
        self.ca_file = ca.write(directory / "ca.crt")
        self.ca_pem = ca.cert_pem
        self.server_key, self.server_cert = ca.issue(SERVER_NAME, server=True).write(
            directory, "server"
        )
        self.gateway = ca.issue("gateway")
        self.gateway_key, self.gateway_cert = self.gateway.write(directory, "gateway")
        self.rogue = rogue_ca.issue("gateway")


@pytest.fixture
async def mtls_orchestrator(tmp_path: Path) -> Any:
    """A real orchestrator with mutual TLS as its only internal authentication."""
    pki = Pki(tmp_path)
    config = OrchestratorConfig(
        data_dir=tmp_path / "orchestrator",
        listen="127.0.0.1:0",
        tls=TlsConfig(
            cert_file=pki.server_cert, key_file=pki.server_key, client_ca_file=pki.ca_file
        ),
    )
    app = await OrchestratorApp.start(config)
    yield app, pki
    await app.stop(0)


async def _list_directly(port: int, credentials: grpc.ChannelCredentials | None) -> Any:
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(
            target, credentials, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
        )
    )
    try:
        return await OrchestratorStub(channel).ListEnvironments(
            requests_pb2.ListEnvironmentsRequest(), metadata=((TENANT, VICTIM),), timeout=10
        )
    finally:
        await channel.close()


async def test_mutual_tls_refuses_peers_without_the_deployments_certificate(
    mtls_orchestrator: Any,
) -> None:
    app, pki = mtls_orchestrator
    refused = {
        "plaintext": None,
        "no certificate": grpc.ssl_channel_credentials(root_certificates=pki.ca_pem),
        "another CA's certificate": grpc.ssl_channel_credentials(
            root_certificates=pki.ca_pem,
            private_key=pki.rogue.key_pem,
            certificate_chain=pki.rogue.cert_pem,
        ),
        "a certificate without its key": grpc.ssl_channel_credentials(
            root_certificates=pki.ca_pem,
            private_key=pki.rogue.key_pem,
            certificate_chain=pki.gateway.cert_pem,
        ),
    }
    for name, credentials in refused.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _list_directly(app.port, credentials)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, name
    gateway_credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_pem,
        private_key=pki.gateway.key_pem,
        certificate_chain=pki.gateway.cert_pem,
    )
    listed = await _list_directly(app.port, gateway_credentials)
    assert list(listed.environments) == []


async def test_a_gateway_with_the_client_certificate_works_end_to_end(
    mtls_orchestrator: Any, tmp_path: Path
) -> None:
    app, pki = mtls_orchestrator
    gateway = await GatewayServer.start(
        GatewayConfig(
            listen="127.0.0.1:0",
            db_path=tmp_path / "gateway.db",
            orchestrators=[OrchestratorEndpoint(id="o1", address=f"127.0.0.1:{app.port}")],
            orchestrator_tls=ClientTlsConfig(
                ca_file=pki.ca_file,
                cert_file=pki.gateway_cert,
                key_file=pki.gateway_key,
                server_name=SERVER_NAME,
            ),
        )
    )
    try:
        key = gateway.keys.create("team-a", [Scope.READ, Scope.WRITE]).secret
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        metadata = (("authorization", f"Bearer {key}"),)
        try:
            created = await stub.CreateEnvironment(
                requests_pb2.CreateEnvironmentRequest(), metadata=metadata, timeout=60
            )
            listed = await stub.ListEnvironments(
                requests_pb2.ListEnvironmentsRequest(), metadata=metadata, timeout=30
            )
            assert [e.id for e in listed.environments] == [created.environment.id]
            await stub.DeleteEnvironment(
                requests_pb2.DeleteEnvironmentRequest(environment_id=created.environment.id),
                metadata=metadata,
                timeout=60,
            )
        finally:
            await channel.close()
    finally:
        await gateway.stop(0)


def test_orchestrator_tls_needs_both_certificate_and_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cert_file and key_file go together"):
        ClientTlsConfig(ca_file=tmp_path / "ca.crt", cert_file=tmp_path / "g.crt")
