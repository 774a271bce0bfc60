"""Settings precedence (argument > environment > YAML > default), validation errors that
name the key and its source, and API key discovery."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sandbox_sdk import AuthenticationError, ClientSettings, ConfigError, SandboxClient
from sandbox_sdk.config import DEFAULT_TARGET, SOCKET_FILENAME, load_settings
from sandbox_sdk.config.keyfile import resolve_api_key


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("file_value", "env_value", "argument", "expected"),
    [
        (None, None, None, 30.0),  # default
        (11, None, None, 11.0),  # YAML beats default
        (11, "12", None, 12.0),  # environment beats YAML
        (11, "12", 13, 13.0),  # argument beats environment
        (None, None, 13, 13.0),
    ],
)
def test_precedence_table(
    tmp_path: Path,
    file_value: int | None,
    env_value: str | None,
    argument: int | None,
    expected: float,
) -> None:
    path = _yaml(tmp_path, f"timeout: {file_value}\n" if file_value else "")
    environ = {"SANDBOX_TIMEOUT": env_value} if env_value else {}
    settings = load_settings(config_path=path, environ=environ, overrides={"timeout": argument})
    assert settings.timeout == expected


def test_nested_keys_merge_across_sources(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "retry:\n  max_attempts: 7\n  deadline: 9\ntarget: file:1\n")
    settings = load_settings(
        config_path=path,
        environ={"SANDBOX_RETRY_DEADLINE": "4", "SANDBOX_TARGET": "env:2"},
        overrides={"retry": {"initial_backoff": 0.2}},
    )
    assert settings.target == "env:2"
    assert (settings.retry.max_attempts, settings.retry.deadline) == (7, 4.0)
    assert settings.retry.initial_backoff == 0.2


def test_config_file_from_environment_and_client_section(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "client:\n  target: shared:9\ngateway:\n  port: 50051\n")
    settings = load_settings(environ={"SANDBOX_CONFIG": str(path)})
    assert settings.target == "shared:9"


def test_unknown_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "tiemout: 5\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config_path=path, environ={})
    message = str(caught.value)
    assert "unknown key 'tiemout'" in message
    assert str(path) in message
    assert "timeout" in message  # the valid keys are listed


def test_bad_value_names_the_key_and_the_variable() -> None:
    with pytest.raises(
        ConfigError,
        match=r"retry\.max_attempts \(from environment variable "
        r"SANDBOX_RETRY_MAX_ATTEMPTS\)",
    ):
        load_settings(environ={"SANDBOX_RETRY_MAX_ATTEMPTS": "zero"})


def test_bad_nested_value_from_file(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "retry:\n  retryable_codes: [UNAVAILABLE, NOPE]\n")
    with pytest.raises(ConfigError, match=r"retry\.retryable_codes .*NOPE"):
        load_settings(config_path=path, environ={})


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_path=tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(config_path=_yaml(tmp_path, "a: [1\n"), environ={})
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(config_path=_yaml(tmp_path, "- 1\n"), environ={})


def test_tls_paths_are_relative_to_the_file_and_enable_tls(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "tls:\n  root_ca: certs/ca.pem\n")
    settings = load_settings(config_path=path, environ={})
    assert settings.tls.enabled
    assert settings.tls.root_ca == tmp_path / "certs" / "ca.pem"


def test_client_cert_needs_its_key() -> None:
    with pytest.raises(ConfigError, match="client_cert and client_key go together"):
        load_settings(environ={"SANDBOX_TLS_CLIENT_CERT": "/c.pem"})


def test_tls_argument_true_turns_tls_on() -> None:
    assert load_settings(environ={}, overrides={"tls": True}).tls.enabled


def test_settings_load_classmethod() -> None:
    settings = ClientSettings.load(target="h:1")
    assert settings.target == "h:1"


def _serve_socket(data_dir: Path) -> socket.socket:
    """A listening Unix socket at ``<data_dir>/gateway.sock`` in a private data dir."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(data_dir / SOCKET_FILENAME))
    listener.listen()
    return listener


def test_default_target_is_the_local_socket_when_it_exists(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert load_settings(environ={"SANDBOX_DATA_DIR": str(data_dir)}).target == DEFAULT_TARGET
    with _serve_socket(data_dir):
        settings = load_settings(environ={"SANDBOX_DATA_DIR": str(data_dir)})
        assert settings.target == f"unix:{data_dir / SOCKET_FILENAME}"
        assert (
            load_settings(
                environ={"SANDBOX_DATA_DIR": str(data_dir), "SANDBOX_TARGET": "h:1"}
            ).target
            == "h:1"
        )


def test_the_local_socket_gets_the_local_admin_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with _serve_socket(data_dir):
        (data_dir / "admin.key").write_text("sk-admin-local-0123456789\n")
        resolved = resolve_api_key(
            api_key=None,
            api_key_file=None,
            target=f"unix:{data_dir / SOCKET_FILENAME}",
            data_dir=data_dir,
        )
    assert resolved.secret == "sk-admin-local-0123456789"
    assert resolved.target == f"unix:{(data_dir / SOCKET_FILENAME).resolve()}"
    assert "0123456789" not in repr(resolved)


@pytest.mark.parametrize("target", ["127.0.0.1:1", "localhost:1", "[::1]:1", "10.1.1.1:1"])
def test_tcp_targets_get_no_key_by_themselves(tmp_path: Path, target: str) -> None:
    (tmp_path / "admin.key").write_text("sk-admin-local-0123456789\n")
    resolved = resolve_api_key(api_key=None, api_key_file=None, target=target, data_dir=tmp_path)
    assert resolved.secret is None
    assert resolved.target == target


def test_a_missing_admin_key_says_how_to_get_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with (
        _serve_socket(data_dir),
        pytest.raises(AuthenticationError, match="sandbox-sdk serve") as caught,
    ):
        resolve_api_key(
            api_key=None,
            api_key_file=None,
            target=f"unix:{data_dir / SOCKET_FILENAME}",
            data_dir=data_dir,
        )
    assert "SANDBOX_API_KEY" in str(caught.value)


def test_key_file_setting_and_empty_file(tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    key_file.write_text("sk-from-file-0123456789\n")
    resolved = resolve_api_key(api_key=None, api_key_file=key_file, target="x:1", data_dir=tmp_path)
    assert resolved.secret == "sk-from-file-0123456789"
    key_file.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        resolve_api_key(api_key=None, api_key_file=key_file, target="x:1", data_dir=tmp_path)


def test_client_discovers_the_key_from_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SANDBOX_API_KEY", raising=False)
    monkeypatch.delenv("SANDBOX_CONFIG", raising=False)
    monkeypatch.delenv("SANDBOX_TARGET", raising=False)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("SANDBOX_DATA_DIR", str(data_dir))
    with _serve_socket(data_dir):
        with pytest.raises(AuthenticationError, match="sandbox-sdk serve"):
            SandboxClient()
        (data_dir / "admin.key").write_text("sk-admin-local-0123456789\n")
        with SandboxClient() as client:
            assert client.settings.data_dir == data_dir
            assert client.settings.target.startswith("unix:")
            assert client._transport.auth.metadata()
            assert "0123456789" not in repr(client._transport.auth)
    with SandboxClient("127.0.0.1:1") as tcp:
        assert tcp._transport.auth.metadata() == ()
