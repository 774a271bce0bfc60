"""Isolation runtimes through the real gateway and orchestrator: asked for, resolved by the
operator's policy, reported back, and refused with an error that says what to do.

The policy's whole table is ``tests/sandbox/test_sandbox_runtime_policy.py``; here each
path runs end to end, the attack included: a tenant the operator holds to gVisor asking
for bubblewrap through the gateway.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from e2e_support import EmbeddedStack, unique_tenant
from typer.testing import CliRunner

from sandbox_sdk import (
    AsyncSandboxClient,
    FailedPreconditionError,
    InvalidArgumentError,
    IsolationRuntime,
    PermissionDeniedError,
    RetryPolicy,
    SandboxClient,
    SandboxError,
)
from sandbox_sdk.api.v1 import environment_pb2, gateway_service_pb2_grpc, requests_pb2
from sandbox_sdk.cli.main import app
from sandbox_sdk.errors import ErrorReason, from_rpc_error

TenantClient = Callable[..., SandboxClient]
StartStack = Callable[[dict[str, Any]], EmbeddedStack]


@pytest.fixture
def fresh(tenant_client: TenantClient) -> SandboxClient:
    """A client of a tenant that owns nothing yet; refused calls are not retried."""
    return tenant_client("runtime", retry=RetryPolicy.disabled())


def _raw_create(
    stack: EmbeddedStack, key: str, runtime: int
) -> requests_pb2.CreateEnvironmentResponse:
    """CreateEnvironment as a hostile client sends it: any runtime number, no SDK checks."""
    request = requests_pb2.CreateEnvironmentRequest(
        spec=environment_pb2.EnvironmentSpec(runtime=runtime)  # type: ignore[arg-type]
    )
    with grpc.insecure_channel(stack.target) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        response: requests_pb2.CreateEnvironmentResponse = stub.CreateEnvironment(
            request, metadata=(("authorization", f"Bearer {key}"),), timeout=60
        )
        return response


@pytest.mark.parametrize("asked", ["bubblewrap", "BUBBLEWRAP", IsolationRuntime.BUBBLEWRAP])
def test_the_runtime_asked_for_is_the_one_reported_everywhere(
    fresh: SandboxClient, asked: str
) -> None:
    with fresh.create_environment(runtime=asked) as sandbox:
        assert sandbox.info.runtime is IsolationRuntime.BUBBLEWRAP
        assert fresh.get_environment(sandbox.id).info.runtime is IsolationRuntime.BUBBLEWRAP
        [listed] = fresh.list_environments()
        assert listed.info.runtime is IsolationRuntime.BUBBLEWRAP
        assert sandbox.exec(["true"]).exit_code == 0


def test_no_runtime_is_the_operators_default_and_never_reported_unspecified(
    fresh: SandboxClient,
) -> None:
    with fresh.create_environment() as sandbox:
        assert sandbox.info.runtime is IsolationRuntime.BUBBLEWRAP


async def test_the_asyncio_client_takes_a_runtime_too(stack: EmbeddedStack) -> None:
    key = stack.tenant_key(unique_tenant("runtime-async"))
    async with AsyncSandboxClient(stack.target, api_key=key) as client:
        sandbox = await client.create_environment(runtime="bubblewrap")
        try:
            assert sandbox.info.runtime is IsolationRuntime.BUBBLEWRAP
        finally:
            await sandbox.delete()


def test_an_unknown_runtime_name_is_refused_before_anything_is_sent(fresh: SandboxClient) -> None:
    with pytest.raises(ValueError, match=r"'bubblewrap' or 'gvisor'") as refused:
        fresh.create_environment(runtime="firecracker")
    assert "firecracker" in str(refused.value)
    assert list(fresh.list_environments(show_terminated=True)) == []


def test_an_unknown_runtime_number_is_a_field_violation_and_creates_nothing(
    stack: EmbeddedStack,
) -> None:
    key = stack.tenant_key(unique_tenant("runtime-raw"))
    with pytest.raises(grpc.RpcError) as caught:
        _raw_create(stack, key, 7)
    error = from_rpc_error(caught.value)
    assert isinstance(error, InvalidArgumentError), error
    [violation] = error.field_violations
    assert violation.field == "spec.runtime"
    assert "ISOLATION_RUNTIME_GVISOR" in violation.description
    with stack.client(api_key=key) as owner:
        assert list(owner.list_environments(show_terminated=True)) == []


@pytest.fixture
def restricted(start_stack: StartStack) -> tuple[EmbeddedStack, str]:
    """A server whose operator holds one tenant to gVisor at least; that tenant's name."""
    tenant = unique_tenant("hostile")
    policy = {"minimum_runtime_by_tenant": {tenant: "gvisor"}}
    return start_stack({"orchestrator": {"sandbox": policy}}), tenant


def test_a_tenant_held_to_gvisor_cannot_get_bubblewrap_through_the_gateway(
    restricted: tuple[EmbeddedStack, str],
) -> None:
    stack, tenant = restricted
    key = stack.tenant_key(tenant)
    with pytest.raises(grpc.RpcError) as caught:
        _raw_create(stack, key, environment_pb2.ISOLATION_RUNTIME_BUBBLEWRAP)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    error = from_rpc_error(caught.value)
    assert error.reason == ErrorReason.RUNTIME_NOT_ALLOWED
    assert "minimum_runtime_by_tenant" in str(error)
    assert "runtime='gvisor'" in str(error)
    with stack.client(api_key=key, retry=RetryPolicy.disabled()) as owner:
        with pytest.raises(PermissionDeniedError, match="leave the runtime out"):
            owner.create_environment(runtime="bubblewrap")
        assert list(owner.list_environments(show_terminated=True)) == []


def test_a_tenant_held_to_gvisor_naming_no_runtime_never_lands_on_the_default(
    restricted: tuple[EmbeddedStack, str],
) -> None:
    """gVisor, or (where runsc is missing) a refusal naming what to install; whatever the
    launch then does, the environment's record says GVISOR, never the weaker default."""
    stack, tenant = restricted
    with stack.client(api_key=stack.tenant_key(tenant), retry=RetryPolicy.disabled()) as owner:
        refusal: SandboxError | None = None
        try:
            owner.create_environment().delete()
        except SandboxError as error:
            refusal = error
        if isinstance(refusal, FailedPreconditionError):
            assert "apt-get install runsc" in str(refusal)
        recorded = {
            sandbox.info.runtime for sandbox in owner.list_environments(show_terminated=True)
        }
        assert recorded <= {IsolationRuntime.GVISOR}


def test_the_restriction_holds_only_its_tenant(restricted: tuple[EmbeddedStack, str]) -> None:
    stack, _ = restricted
    key = stack.tenant_key(unique_tenant("other"))
    with stack.client(api_key=key) as other, other.create_environment(runtime="bubblewrap") as sb:
        assert sb.info.runtime is IsolationRuntime.BUBBLEWRAP


def test_the_cli_creates_with_a_runtime_and_shows_it(
    stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_TARGET", stack.target)
    monkeypatch.setenv("SANDBOX_API_KEY", stack.tenant_key(unique_tenant("runtime-cli")))
    monkeypatch.setenv("COLUMNS", "250")
    runner = CliRunner()

    def cli(*args: str) -> Any:
        return runner.invoke(app, list(args), catch_exceptions=False)

    created = cli("env", "create", "--runtime", "BubbleWrap")
    assert created.exit_code == 0, created.output
    environment_id = created.stdout.strip()
    try:
        shown = cli("env", "get", environment_id)
        assert shown.exit_code == 0, shown.output
        assert [line.split() for line in shown.stdout.splitlines() if "runtime" in line] == [
            ["runtime", "bubblewrap"]
        ]
        assert "bubblewrap" in cli("env", "ls").stdout
        as_json = json.loads(cli("env", "get", environment_id, "--json").stdout)
        assert as_json["runtime"] == "BUBBLEWRAP"
    finally:
        assert cli("env", "rm", environment_id).exit_code == 0
    refused = cli("env", "create", "--runtime", "firecracker")
    assert refused.exit_code == 2
    assert "bubblewrap" in refused.output
    assert "gvisor" in refused.output


def test_a_tenant_held_to_gvisor_cannot_run_build_steps_under_bubblewrap(
    restricted: tuple[EmbeddedStack, str],
) -> None:
    """Template build steps run the tenant's code in a bubblewrap build sandbox: for a
    tenant held to gVisor that would be a way around the hold, so they are refused."""
    stack, tenant = restricted
    with stack.client(api_key=stack.tenant_key(tenant), retry=RetryPolicy.disabled()) as owner:
        for steps in ({"commands": ["id"]}, {"files": {"/etc/x": b"x"}}, {"pip": ["six"]}):
            with pytest.raises(PermissionDeniedError, match="template build steps"):
                owner.build_template(debian="bookworm", **steps)  # type: ignore[arg-type]
        assert list(owner.list_templates()) == []
