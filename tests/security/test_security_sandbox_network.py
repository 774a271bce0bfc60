"""Attacks through the network: the host's loopback, its own addresses, denied ranges.

Egress environments get their own namespace connected by slirp4netns; a tenant
cannot choose the host's network; the firewall is out of the commands' reach.
"""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sandbox_attack_support import (
    TENANT,
    OutsideHost,
    create,
    fast_settings,
    make_spec,
    needs_isolation,
    outside_host,
    python_in_sandbox,
    run,
    running_manager,
    under_gvisor,
)

from sandbox_sdk.server.orchestrator.sandbox.environment_record import NetworkPolicy
from sandbox_sdk.server.orchestrator.sandbox.manager import SandboxManager
from sandbox_sdk.server.orchestrator.sandbox.network import nft_ruleset
from sandbox_sdk.server.status import ServiceError

pytestmark = [
    *needs_isolation,
    pytest.mark.skipif(
        shutil.which("slirp4netns") is None or shutil.which("nft") is None,
        reason="egress needs slirp4netns and nftables (make install)",
    ),
]

EGRESS = NetworkPolicy.EGRESS
NO_OPERATOR_DENY = fast_settings(egress_denied_cidrs=())


def _connect_script(address: str, port: int) -> list[str]:
    return python_in_sandbox(
        f"""
        import socket
        try:
            with socket.create_connection(({address!r}, {port}), timeout=5) as s:
                print("connected", s.recv(100).decode())
        except OSError as error:
            print("refused", error)
        """
    )


async def _reach(manager: SandboxManager, environment_id: str, address: str, port: int) -> str:
    result = await run(manager, environment_id, _connect_script(address, port))
    return result.out.strip()


@pytest.fixture
def outside() -> Iterator[OutsideHost]:
    with outside_host() as host:
        yield host


@pytest.fixture
def loopback_server() -> Iterator[int]:
    """A server on the host's loopback and every address, that must stay unreachable."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", 0))  # noqa: S104  (the host's own addresses are the target)
    listener.listen(16)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            connection.sendall(b"host secret")
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


@pytest.mark.bubblewrap_only(
    reason="gVisor environments have no network but loopback here (docs/security.md); "
    "test_sandbox_gvisor checks that one asking for a network is refused"
)
async def test_egress_reaches_an_outside_host(tmp_path: Path, outside: OutsideHost) -> None:
    async with running_manager(tmp_path, settings=NO_OPERATOR_DENY) as manager:
        environment = await create(manager, make_spec(network=EGRESS))
        assert await _reach(manager, environment.id, outside.address, outside.port) == (
            "connected hello from the test host"
        )


@pytest.mark.bubblewrap_only(
    reason="gVisor environments have no network but loopback here (docs/security.md); "
    "test_sandbox_gvisor checks that one asking for a network is refused"
)
async def test_the_hosts_loopback_and_own_addresses_are_unreachable(
    tmp_path: Path, loopback_server: int
) -> None:
    own_addresses = {
        address[4][0]
        for address in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        if not address[4][0].startswith("127.")
    }
    # slirp4netns's gateway is the host; its loopback is disabled, the rest denied.
    targets = ["10.0.2.2", "127.0.0.1", "10.0.2.3", *sorted(own_addresses)]
    async with running_manager(tmp_path, settings=NO_OPERATOR_DENY) as manager:
        environment = await create(manager, make_spec(network=EGRESS))
        for target in targets:
            reached = await _reach(manager, environment.id, target, loopback_server)
            assert reached.startswith("refused"), (target, reached)


@pytest.mark.bubblewrap_only(
    reason="gVisor environments have no network but loopback here (docs/security.md); "
    "test_sandbox_gvisor checks that one asking for a network is refused"
)
async def test_operator_and_tenant_deny_lists_and_allow_lists_hold(
    tmp_path: Path, outside: OutsideHost
) -> None:
    async with running_manager(tmp_path) as manager:  # the default operator list has 10/8
        denied_by_operator = await create(manager, make_spec(network=EGRESS))
        allowed_but_denied = await create(
            manager, make_spec(network=EGRESS, egress_allow_cidrs=[f"{outside.address}/32"])
        )
        for environment in (denied_by_operator, allowed_but_denied):
            reached = await _reach(manager, environment.id, outside.address, outside.port)
            assert reached.startswith("refused"), reached
    async with running_manager(tmp_path / "open", settings=NO_OPERATOR_DENY) as manager:
        tenant_denied = await create(
            manager, make_spec(network=EGRESS, egress_deny_cidrs=["10.211.0.0/16"])
        )
        not_in_allow_list = await create(
            manager, make_spec(network=EGRESS, egress_allow_cidrs=["203.0.113.0/24"])
        )
        for environment in (tenant_denied, not_in_allow_list):
            reached = await _reach(manager, environment.id, outside.address, outside.port)
            assert reached.startswith("refused"), reached


@pytest.mark.bubblewrap_only(
    reason="gVisor environments have no network but loopback here (docs/security.md); "
    "test_sandbox_gvisor checks that one asking for a network is refused"
)
async def test_commands_cannot_change_the_firewall_or_the_interface(
    tmp_path: Path, outside: OutsideHost
) -> None:
    async with running_manager(tmp_path) as manager:
        environment = await create(manager, make_spec(network=EGRESS))
        attempts = [
            ["nft", "flush", "ruleset"],
            ["nft", "delete", "table", "inet", "sandbox_egress"],
            ["ip", "addr", "add", "10.0.2.50/24", "dev", "tap0"],
            ["ip", "route", "add", "10.211.0.0/16", "via", "10.0.2.2"],
            ["unshare", "-rn", "true"],
        ]
        for argv in attempts:
            result = await run(manager, environment.id, argv)
            assert result.result.exit_code != 0, (argv, result.out, result.err)
        reached = await _reach(manager, environment.id, outside.address, outside.port)
        assert reached.startswith("refused"), reached


async def test_a_tenant_cannot_choose_the_hosts_network(tmp_path: Path) -> None:
    async with running_manager(tmp_path) as manager:
        with pytest.raises(ServiceError) as refused:
            await create(manager, make_spec(network=NetworkPolicy.HOST))
        assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
        assert "NETWORK_POLICY_EGRESS" in str(refused.value)
    allowed = fast_settings(host_network_tenants=("someone-else",))
    async with running_manager(tmp_path / "other", settings=allowed) as manager:
        with pytest.raises(ServiceError):
            await create(manager, make_spec(network=NetworkPolicy.HOST), tenant=TENANT)


async def test_no_network_environments_share_nothing_with_the_host(
    tmp_path: Path, loopback_server: int
) -> None:
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(b"\0sandbox-sdk-test-abstract")
    abstract.listen(1)
    probe = python_in_sandbox(
        """
        import socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(b"\\0sandbox-sdk-test-abstract"); print("connected")
        except OSError as error:
            print("refused", error)
        """
    )
    try:
        async with running_manager(tmp_path) as manager:
            # Under gVisor a network is refused (test_sandbox_gvisor): NONE is all there is.
            for network in (
                (NetworkPolicy.NONE,) if under_gvisor() else (NetworkPolicy.NONE, EGRESS)
            ):
                environment = await create(manager, make_spec(network=network))
                result = await run(manager, environment.id, probe)
                assert result.out.startswith("refused"), (network, result.out)
                reached = await _reach(manager, environment.id, "127.0.0.1", loopback_server)
                assert reached.startswith("refused"), (network, reached)
    finally:
        abstract.close()


def test_the_firewall_is_rendered_from_parsed_networks_only() -> None:
    from sandbox_sdk.server.orchestrator.sandbox.network import EgressRules, parse_cidrs

    for hostile in ["1.2.3.4/32 } ; flush ruleset", "10.0.0.0/8\naccept", "::/0;", "evil"]:
        with pytest.raises(ValueError, match="is not a CIDR block"):
            parse_cidrs([hostile])
    rules = EgressRules(allowed=parse_cidrs(["203.0.113.7/24"]), denied=parse_cidrs(["::1"]))
    text = nft_ruleset(rules)
    assert "ip daddr { 203.0.113.0/24 } accept" in text
    assert "ip6 daddr { ::1/128 } reject" in text
