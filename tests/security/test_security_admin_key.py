"""Issue 9, class 4: the local admin key goes only to the server that proves it is the local one.

The attacker is any local process (or a sandbox sharing the host network) that
listens where the SDK might connect, and records what it receives. The SDK's
user has the real embedded server running, its data dir holding admin.key, and
no key configured. Whatever target, environment variable or file the attacker
gets the SDK to use, the key must reach only the real server's Unix socket.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_support import BackgroundLoop, EmbeddedStack
from typer.testing import CliRunner

from sandbox_sdk import AuthenticationError, ConfigError, SandboxClient, SandboxError
from sandbox_sdk.cli.main import app
from sandbox_sdk.config import SOCKET_FILENAME

NOBODY = 65534
StartEmbedded = Callable[..., EmbeddedStack]


class KeyTrap(grpc.GenericRpcHandler):
    """A fake gateway: records the metadata of every call, then refuses it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        metadata = handler_call_details.invocation_metadata or ()
        self.seen.append({key: str(value) for key, value in metadata})

        def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "send me your key")
            return b""

        return grpc.unary_unary_rpc_method_handler(refuse)

    def leaked(self, secret: str) -> bool:
        """Whether any recorded call carried credentials or the secret."""
        return any(
            "authorization" in call or any(secret in value for value in call.values())
            for call in self.seen
        )


class TrapServer:
    """The fake gateway listening on 127.0.0.1 (and ::1 when available) and/or Unix sockets."""

    def __init__(self) -> None:
        self.trap = KeyTrap()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((self.trap,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        try:
            self.ipv6 = self.server.add_insecure_port(f"[::1]:{self.port}") == self.port
        except RuntimeError:
            self.ipv6 = False

    def listen_unix(self, path: Path) -> str:
        """Also listens on the Unix socket ``path``; returns its target."""
        self.server.add_insecure_port(f"unix:{path}")
        return f"unix:{path}"


@pytest.fixture
def trap() -> Iterator[TrapServer]:
    made = TrapServer()
    yield made
    made.server.stop(0)


@pytest.fixture(scope="module")
def server(
    security_loop: BackgroundLoop, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedStack]:
    """The user's real embedded server, in a data dir of its own."""
    started = EmbeddedStack.start(security_loop, tmp_path_factory.mktemp("user") / "data")
    yield started
    started.stop()


def _attempt(**options: Any) -> SandboxError | None:
    """Makes one call with a client built from ``options``; the error, if any."""
    try:
        with SandboxClient(timeout=10, retry={"max_attempts": 1}, **options) as client:
            list(client.list_environments())
    except SandboxError as error:
        return error
    return None


# -- the server's side of the proof -----------------------------------------------------------


def test_the_embedded_server_keeps_its_key_and_socket_private(server: EmbeddedStack) -> None:
    data_dir = server.data_dir
    socket_file = data_dir / SOCKET_FILENAME
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "admin.key").stat().st_mode) == 0o600
    assert stat.S_ISSOCK(socket_file.lstat().st_mode)
    assert stat.S_IMODE(socket_file.lstat().st_mode) == 0o600
    assert server.server.local_target == f"unix:{socket_file}"


@pytest.mark.parametrize("mode", [0o777, 0o755, 0o711])
def test_a_loose_data_dir_is_made_private_again(
    start_embedded: StartEmbedded, tmp_path: Path, mode: int
) -> None:
    data_dir = tmp_path / "loose"
    data_dir.mkdir()
    data_dir.chmod(mode)
    start_embedded(data_dir)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


def test_a_second_server_cannot_take_over_the_socket(
    server: EmbeddedStack, start_embedded: StartEmbedded, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="another server is listening"):
        start_embedded(server.data_dir)
    monkeypatch.setenv("SANDBOX_DATA_DIR", str(server.data_dir))
    assert _attempt() is None  # the first server still owns its socket


def test_the_socket_is_removed_when_the_server_stops(
    start_embedded: StartEmbedded, tmp_path: Path
) -> None:
    stopped = start_embedded(tmp_path / "stopping")
    stopped.stop()
    assert not (stopped.data_dir / SOCKET_FILENAME).exists()


# -- the SDK's side: only the local socket gets the key ---------------------------------------


def test_the_default_target_is_the_local_socket_and_it_gets_the_key(
    server: EmbeddedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_DATA_DIR", str(server.data_dir))
    with SandboxClient() as client:
        assert client.settings.target == f"unix:{(server.data_dir / SOCKET_FILENAME).resolve()}"
        assert list(client.list_environments()) == []


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:{port}",
        "localhost:{port}",
        "dns:///localhost:{port}",
        "ipv4:127.0.0.1:{port}",
        "[::1]:{port}",
        "ipv6:[::1]:{port}",
    ],
)
@pytest.mark.parametrize("given_by", ["argument", "SANDBOX_TARGET", "config file"])
def test_a_loopback_listener_gets_no_key(
    server: EmbeddedStack,
    trap: TrapServer,
    *,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    given_by: str,
) -> None:
    if "::1" in target and not trap.ipv6:
        pytest.skip("no IPv6 loopback on this machine")
    aimed = target.format(port=trap.port)
    monkeypatch.setenv("SANDBOX_DATA_DIR", str(server.data_dir))
    options: dict[str, Any] = {}
    if given_by == "argument":
        options["target"] = aimed
    elif given_by == "SANDBOX_TARGET":
        monkeypatch.setenv("SANDBOX_TARGET", aimed)
    else:
        config = tmp_path / "config.yaml"
        config.write_text(f"target: '{aimed}'\ndata_dir: {server.data_dir}\n")
        options["config_path"] = config
    trap.server.start()
    assert isinstance(_attempt(**options), AuthenticationError)
    assert trap.trap.seen, "the client never reached the listener"
    assert not trap.trap.leaked(server.admin_key)


def test_the_real_servers_tcp_port_without_a_key_says_what_to_do(
    server: EmbeddedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_DATA_DIR", str(server.data_dir))
    error = _attempt(target=server.target)
    assert isinstance(error, AuthenticationError)
    assert error.reason == "API_KEY_MISSING"
    assert "SANDBOX_API_KEY" in error.message
    assert "gateway.sock" in error.message


def test_the_cli_sends_no_key_to_a_tcp_target(
    server: EmbeddedStack, trap: TrapServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_DATA_DIR", str(server.data_dir))
    trap.server.start()
    result = CliRunner().invoke(app, ["--target", f"127.0.0.1:{trap.port}", "env", "ls"])
    assert result.exit_code == 4, result.output  # AuthenticationError
    assert trap.trap.seen
    assert not trap.trap.leaked(server.admin_key)


def test_an_attackers_unix_socket_gets_no_key(
    server: EmbeddedStack,
    trap: TrapServer,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A short directory: spelled through the data dir, its socket's path must still fit
    # in a socket address (108 bytes), under an xdist worker's longer temp dir too.
    attacker = tmp_path_factory.mktemp("a")
    attacker.chmod(0o700)
    targets = [
        trap.listen_unix(attacker / SOCKET_FILENAME),
        # Spelled as a path inside the data dir, it leads out of it.
        f"unix:{server.data_dir}/{os.path.relpath(attacker / SOCKET_FILENAME, server.data_dir)}",
        f"unix://{attacker / SOCKET_FILENAME}",
    ]
    trap.server.start()
    monkeypatch.setenv("SANDBOX_DATA_DIR", str(server.data_dir))
    for target in targets:
        assert isinstance(_attempt(target=target), AuthenticationError), target
    assert len(trap.trap.seen) == len(targets)
    assert not trap.trap.leaked(server.admin_key)


def test_an_abstract_socket_never_gets_the_key(
    server: EmbeddedStack, trap: TrapServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"sandbox-sdk-trap-{os.getpid()}"
    trap.server.add_insecure_port(f"unix-abstract:{name}")
    trap.server.start()
    monkeypatch.setenv("SANDBOX_DATA_DIR", str(server.data_dir))
    assert isinstance(_attempt(target=f"unix-abstract:{name}"), AuthenticationError)
    assert trap.trap.seen
    assert not trap.trap.leaked(server.admin_key)


def test_a_link_to_the_real_socket_is_followed_once_at_the_check(
    server: EmbeddedStack, trap: TrapServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    link = shared / SOCKET_FILENAME
    link.symlink_to(server.data_dir / SOCKET_FILENAME)
    evil = Path(trap.listen_unix(tmp_path / "evil.sock").removeprefix("unix:"))
    trap.server.start()
    monkeypatch.setenv("SANDBOX_DATA_DIR", str(server.data_dir))
    with SandboxClient(f"unix:{link}", timeout=10) as client:
        real = (server.data_dir / SOCKET_FILENAME).resolve()
        assert client.settings.target == f"unix:{real}"
        link.unlink()
        link.symlink_to(evil)  # swapped after the check: the client is pinned to the real one
        assert list(client.list_environments()) == []
    assert not trap.trap.seen


# -- data dirs an attacker can change: the SDK refuses instead of sending ---------------------


def _planted(trap: TrapServer, data_dir: Path, secret: str) -> str:
    """A data dir holding the user's key next to a socket the attacker listens on."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "admin.key").write_text(secret + "\n")
    return trap.listen_unix(data_dir / SOCKET_FILENAME)


def _refused(target: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> ConfigError:
    monkeypatch.setenv("SANDBOX_DATA_DIR", str(data_dir))
    with pytest.raises(ConfigError, match="not sending the local admin key") as caught:
        SandboxClient(target)
    assert "SANDBOX_API_KEY" in str(caught.value)
    return caught.value


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o755, 0o750, 0o711, 0o701])
def test_a_data_dir_others_can_enter_is_refused(
    server: EmbeddedStack,
    trap: TrapServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: int,
) -> None:
    data_dir = tmp_path / "shared-data"
    target = _planted(trap, data_dir, server.admin_key)
    data_dir.chmod(mode)
    trap.server.start()
    assert "chmod 700" in str(_refused(target, data_dir, monkeypatch))
    assert not trap.trap.seen


def test_a_data_dir_reached_through_a_link_is_judged_where_it_leads(
    server: EmbeddedStack, trap: TrapServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = tmp_path / "planted"
    _planted(trap, planted, server.admin_key)
    planted.chmod(0o777)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    link = private / "data"
    link.symlink_to(planted)
    trap.server.start()
    _refused(f"unix:{link / SOCKET_FILENAME}", link, monkeypatch)
    assert not trap.trap.seen


@pytest.mark.parametrize("parent_mode", [0o777, 0o775, 0o757])
def test_a_data_dir_inside_a_directory_others_can_write_is_refused(
    server: EmbeddedStack,
    trap: TrapServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    parent_mode: int,
) -> None:
    """Whoever can rename the data dir can put their own in its place."""
    parent = tmp_path / "public"
    parent.mkdir()
    data_dir = parent / "data"
    target = _planted(trap, data_dir, server.admin_key)
    data_dir.chmod(0o700)
    parent.chmod(parent_mode)
    trap.server.start()
    assert "other users" in str(_refused(target, data_dir, monkeypatch))
    assert not trap.trap.seen


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
@pytest.mark.parametrize("given_away", ["socket", "data dir"])
def test_a_socket_or_data_dir_of_another_user_is_refused(
    server: EmbeddedStack,
    trap: TrapServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    given_away: str,
) -> None:
    data_dir = tmp_path / "theirs"
    target = _planted(trap, data_dir, server.admin_key)
    data_dir.chmod(0o700)
    trap.server.start()
    os.chown(data_dir / SOCKET_FILENAME if given_away == "socket" else data_dir, NOBODY, -1)
    assert f"uid {NOBODY}" in str(_refused(target, data_dir, monkeypatch))
    assert not trap.trap.seen


def test_something_else_than_a_socket_is_refused(
    server: EmbeddedStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "fifo"
    data_dir.mkdir(mode=0o700)
    (data_dir / "admin.key").write_text(server.admin_key + "\n")
    os.mkfifo(data_dir / SOCKET_FILENAME)
    assert "is not a socket" in str(
        _refused(f"unix:{data_dir / SOCKET_FILENAME}", data_dir, monkeypatch)
    )


def test_the_socket_of_another_data_dir_gets_no_key(
    server: EmbeddedStack, trap: TrapServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SANDBOX_DATA_DIR elsewhere, no socket is the local one: nothing gets a key."""
    monkeypatch.setenv("SANDBOX_DATA_DIR", str(server.data_dir.parent))
    trap.server.start()
    assert isinstance(_attempt(target=f"127.0.0.1:{trap.port}"), AuthenticationError)
    assert isinstance(_attempt(target=server.server.local_target), AuthenticationError)
    assert not trap.trap.leaked(server.admin_key)


def test_the_local_operator_cli_creates_keys_for_any_tenant(
    server: EmbeddedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No target and no key: the CLI uses the server's socket and its operator key."""
    monkeypatch.setenv("SANDBOX_DATA_DIR", str(server.data_dir))
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--tenant", "cli-x", "--scope", "admin"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    with server.client(api_key=secret) as tenant_admin:
        assert tenant_admin.create_api_key().key.tenant == "cli-x"
