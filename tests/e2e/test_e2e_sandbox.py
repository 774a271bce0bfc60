"""Sandboxes reached through the SDK and the gateway: limits and isolation hold end to end."""

from __future__ import annotations

import itertools
import threading

import pytest
import sandbox_runtimes
from e2e_support import EmbeddedStack, unique_tenant

from sandbox_sdk import (
    EnvironmentState,
    ExitReason,
    FailedPreconditionError,
    IsolationRuntime,
    NetworkPolicy,
    PermissionDeniedError,
    SandboxClient,
)
from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.orchestrator.sandbox.runtimes import GVISOR_MEMORY_BYTES

pytestmark = pytest.mark.isolation

CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2)\n"
    "except OSError as error:\n"
    "    print(type(error).__name__)\n"
    "else:\n"
    "    print('connected')\n"
)


def _memory_bound(limit: int) -> int:
    """The most memory an environment's usage may show: under gVisor its usage counts gVisor's
    own processes too, which get a budget on top of the commands' limit (runtimes.py)."""
    if sandbox_runtimes.current() is IsolationRuntime.GVISOR:
        return limit + GVISOR_MEMORY_BYTES
    return limit


def test_commands_are_confined_by_the_environments_limits(
    client: SandboxClient, stack: EmbeddedStack
) -> None:
    with client.create_environment(memory="64Mi", pids=32, labels={"suite": "e2e"}) as sandbox:
        runtime = sandbox_runtimes.current()
        assert sandbox.info.runtime is runtime
        assert sandbox.info.isolation.startswith(runtime.value.lower())

        # No network: not even the gateway on the host's loopback.
        reached = sandbox.exec(["python3", "-c", CONNECT, str(stack.server.port)])
        assert reached.exit_code == 0, reached.stderr
        assert reached.stdout.strip() != "connected"

        whoami = sandbox.exec(["id", "-u"])
        assert whoami.stdout.strip() != "0", "commands must not run as root"

        timed_out = sandbox.exec(["sleep", "30"], timeout=1)
        assert timed_out.reason is ExitReason.TIMEOUT

        hog = sandbox.exec(["python3", "-c", "x = bytearray(256 * 1024 * 1024); print(len(x))"])
        assert hog.reason is ExitReason.OUT_OF_MEMORY
        assert hog.stdout == ""

        # The environment survives its commands' failures and keeps reporting usage.
        assert sandbox.refresh().state is EnvironmentState.RUNNING
        report = sandbox.usage()
        assert report.limits.memory_bytes == 64 * 1024**2
        assert report.limits.max_pids == 32
        with sandbox.stream_usage(interval=0.2) as samples:
            taken = list(itertools.islice(samples, 2))
        assert len(taken) == 2
        assert all(sample.memory_bytes <= _memory_bound(64 * 1024**2) for sample in taken)

        updated = sandbox.update(labels={"suite": "e2e", "step": "2"}, ttl="20m")
        assert updated.labels == {"suite": "e2e", "step": "2"}
        assert updated.ttl_seconds == 1200
        assert [s.id for s in client.list_environments(labels={"step": "2"})] == [sandbox.id]
    assert sandbox.refresh().state is EnvironmentState.TERMINATED


def test_deleting_an_environment_ends_its_command_and_usage_streams(
    client: SandboxClient,
) -> None:
    sandbox = client.create_environment()
    command = sandbox.exec_stream(["sh", "-c", "echo go; exec sleep 120"])
    assert next(iter(command)).text == "go\n"
    usage = sandbox.stream_usage(interval=0.2, timeout=60)
    assert next(usage).pids >= 1
    deleter = threading.Thread(target=sandbox.delete)
    deleter.start()
    try:
        list(usage)  # ends, rather than following a dead environment forever
        assert command.result().reason is ExitReason.CANCELLED
    finally:
        deleter.join(60)
        usage.close()
    assert sandbox.refresh().state is EnvironmentState.TERMINATED


@pytest.mark.bubblewrap_only(
    reason="gVisor environments have no network but loopback here (docs/security.md); "
    "test_a_network_under_gvisor_is_refused_with_what_to_do_instead checks the refusal"
)
def test_egress_reaches_out_but_never_the_gateway_and_host_is_refused(
    client: SandboxClient, stack: EmbeddedStack
) -> None:
    with client.create_environment(network="egress", egress_deny=["203.0.113.0/24"]) as sandbox:
        assert sandbox.info.network is NetworkPolicy.EGRESS
        # The gateway listens on the host's loopback and addresses: slirp4netns
        # reaches neither the loopback (10.0.2.2) nor, by the firewall, the rest.
        for address in ("10.0.2.2", "127.0.0.1"):
            reached = sandbox.exec(
                ["python3", "-c", CONNECT.replace("127.0.0.1", address), str(stack.server.port)]
            )
            assert reached.stdout.strip() != "connected", address
    with pytest.raises(PermissionDeniedError, match="NETWORK_POLICY_EGRESS"):
        client.create_environment(network="host")


def test_a_network_under_gvisor_is_refused_with_what_to_do_instead(client: SandboxClient) -> None:
    if sandbox_runtimes.current() is not IsolationRuntime.GVISOR:
        pytest.skip("gVisor only: under bubblewrap an environment may have a network")
    label = {"asked": unique_tenant("network")}
    with pytest.raises(FailedPreconditionError) as refused:
        client.create_environment(network="egress", labels=label)
    assert refused.value.reason == ErrorReason.NETWORK_UNAVAILABLE
    assert "runtime='bubblewrap'" in str(refused.value)
    assert "network NONE" in str(refused.value)
    assert list(client.list_environments(labels=label, show_terminated=True)) == []
