"""Several gateways as one target: how a list is read from each source, the gRPC
target and round-robin policy the channel gets, and that no list gets the local key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox_sdk import ClientSettings, ConfigError
from sandbox_sdk.client.balancing import ROUND_ROBIN_SERVICE_CONFIG, channel_target
from sandbox_sdk.config import load_settings
from sandbox_sdk.config.keyfile import resolve_api_key
from sandbox_sdk.config.settings import TlsSettings


def _round_robin(options: tuple[tuple[str, object], ...]) -> bool:
    config = dict(options).get("grpc.service_config")
    return isinstance(config, str) and json.loads(config) == {
        "loadBalancingConfig": [{"round_robin": {}}]
    }


def test_a_list_comes_from_yaml_the_environment_or_an_argument(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("targets: [a.example:50051, b.example:50051]\n")
    from_file = load_settings(config_path=path, environ={})
    from_env = load_settings(environ={"SANDBOX_TARGET": "a.example:50051, b.example:50051"})
    from_argument = load_settings(
        overrides={"target": ["a.example:50051", "b.example:50051"]}, environ={}
    )
    for settings in (from_file, from_env, from_argument):
        assert settings.addresses == ("a.example:50051", "b.example:50051")


def test_the_environment_overrides_a_files_list(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("targets: [a.example:50051, b.example:50051]\n")
    settings = load_settings(config_path=path, environ={"SANDBOX_TARGET": "c.example:50051"})
    assert settings.addresses == ("c.example:50051",)


def test_target_and_targets_together_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("target: a.example:50051\ntargets: [b.example:50051]\n")
    with pytest.raises(ConfigError, match="either 'target' or 'targets'"):
        load_settings(config_path=path, environ={})


@pytest.mark.parametrize(
    ("target", "complaint"),
    [
        ("a.example:50051,,b.example:50051", "empty item"),
        ("a.example:50051,unix:/tmp/gateway.sock", "host:port items only"),
        ("a.example:50051,b.example", "is not host:port"),
    ],
)
def test_bad_lists_say_what_is_wrong(target: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_settings(overrides={"target": target}, environ={})


def test_a_list_becomes_one_address_target_balanced_round_robin() -> None:
    target = channel_target(ClientSettings(target=["127.0.0.1:5001", "localhost:5002"]))
    assert target.target == "ipv4:127.0.0.1:5001,127.0.0.1:5002"
    assert _round_robin(target.options)
    assert "grpc.default_authority" not in dict(target.options)


def test_an_ipv6_list_uses_the_ipv6_scheme() -> None:
    target = channel_target(ClientSettings(target="[::1]:5001,[::1]:5002"))
    assert target.target == "ipv6:[::1]:5001,[::1]:5002"


def test_an_unresolvable_gateway_is_left_out_and_none_at_all_is_an_error() -> None:
    settings = ClientSettings(target="127.0.0.1:5001,no-such-host.invalid:5002")
    assert channel_target(settings).target == "ipv4:127.0.0.1:5001"
    with pytest.raises(ConfigError, match="resolves to an address"):
        channel_target(ClientSettings(target="a.invalid:1,b.invalid:2"))


def test_a_dns_target_keeps_its_resolver_and_balances() -> None:
    target = channel_target(ClientSettings(target="dns:///gateway.example:50051"))
    assert target.target == "dns:///gateway.example:50051"
    assert target.options == (("grpc.service_config", ROUND_ROBIN_SERVICE_CONFIG),)


def test_one_address_is_left_to_grpc_as_before() -> None:
    target = channel_target(ClientSettings(target="gateway.example:50051"))
    assert target.target == "gateway.example:50051"
    assert target.options == ()


def test_a_tls_list_checks_the_certificate_against_the_first_name() -> None:
    settings = ClientSettings(target="localhost:5001,127.0.0.1:5002", tls=TlsSettings(enabled=True))
    assert dict(channel_target(settings).options)["grpc.default_authority"] == "localhost:5001"
    named = settings.model_copy(update={"tls": TlsSettings(enabled=True, server_name="gw.example")})
    assert "grpc.default_authority" not in dict(channel_target(named).options)


@pytest.mark.parametrize("target", ["127.0.0.1:1,127.0.0.1:2", "dns:///localhost:1"])
def test_several_gateways_never_get_the_local_admin_key(tmp_path: Path, target: str) -> None:
    (tmp_path / "admin.key").write_text("sk-admin-local-0123456789\n")
    settings = ClientSettings(target=target, data_dir=tmp_path)
    resolved = resolve_api_key(
        api_key=None, api_key_file=None, target=settings.target, data_dir=tmp_path
    )
    assert resolved.secret is None
    assert resolved.target == target
