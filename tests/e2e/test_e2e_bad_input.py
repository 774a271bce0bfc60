"""Bad input is refused with a typed error that names the field, and creates nothing.

Each case runs as a fresh tenant, so "nothing was created" is checked by listing
exactly what that tenant owns afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_support import EmbeddedStack, unique_tenant
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from sandbox_sdk import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RetryPolicy,
    Sandbox,
    SandboxClient,
    SandboxError,
)
from sandbox_sdk.api.v1 import common_pb2, environment_pb2, gateway_service_pb2_grpc, requests_pb2
from sandbox_sdk.errors import from_rpc_error

TenantClient = Callable[..., SandboxClient]


@pytest.fixture
def fresh(tenant_client: TenantClient) -> SandboxClient:
    """A client of a tenant that owns nothing yet; refused calls are not retried."""
    return tenant_client("bad-input", retry=RetryPolicy.disabled())


def _assert_invalid(error: SandboxError, field: str) -> None:
    assert isinstance(error, InvalidArgumentError), error
    fields = [violation.field for violation in error.field_violations]
    assert field in fields, f"expected a violation of {field}, got {fields}"
    described = next(v.description for v in error.field_violations if v.field == field)
    assert described.strip(), "a field violation must say what to do"
    assert field in str(error)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        pytest.param({"cpu": -1}, "spec.limits.cpu_cores", id="negative-cpu"),
        pytest.param({"memory": "100Ti"}, "spec.limits.memory_bytes", id="too-much-memory"),
        pytest.param({"memory": "-1"}, "spec.limits.memory_bytes", id="negative-memory"),
        pytest.param({"pids": -5}, "spec.limits.max_pids", id="negative-pids"),
        pytest.param({"ttl": -5}, "spec.ttl", id="negative-ttl"),
        pytest.param({"env": {"A=B": "x"}}, "spec.env_vars['A=B']", id="bad-env-var-name"),
        pytest.param({"files": {"../escape.txt": "x"}}, "files[0].path", id="file-outside"),
        pytest.param({"network": "internet"}, "spec.network_policy", id="unknown-network"),
    ],
)
def test_invalid_environment_specs_are_refused_and_create_nothing(
    fresh: SandboxClient, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(SandboxError) as caught:
        fresh.create_environment(**options)
    _assert_invalid(caught.value, field)
    assert list(fresh.list_environments(show_terminated=True)) == []


@pytest.fixture
def sandbox(fresh: SandboxClient) -> Sandbox:
    return fresh.create_environment()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        pytest.param(
            {"model": "echo", "parameters": {"temperature": 5}},
            "spec.parameters.temperature",
            id="temperature-5",
        ),
        pytest.param(
            {"model": "gpt-3", "parameters": {"top_p": 1.5}},
            "spec.parameters.top_p",
            id="top-p-over-1",
        ),
        pytest.param(
            {"model": "gpt-3", "parameters": {"max_tokens": 0}},
            "spec.parameters.max_tokens",
            id="no-tokens",
        ),
        pytest.param(
            {"model": "gpt-3", "parameters": {"temperature": "hot"}},
            "spec.parameters.temperature",
            id="temperature-not-a-number",
        ),
        pytest.param(
            {"model": "gpt-3", "parameters": {"bogus": 1}},
            "spec.parameters.extra.bogus",
            id="unknown-parameter",
        ),
        pytest.param(
            {"model": "echo", "repeats": -1},
            "spec.repeats",
            id="negative-repeats",
        ),
        pytest.param(
            {"model": "echo", "scorers": [{"regex": "("}]},
            "spec.scorers[0].regex.pattern",
            id="bad-regex",
        ),
        pytest.param(
            {"model": "echo", "prompt": None, "dataset_path": "../outside.jsonl"},
            "spec.dataset_path",
            id="dataset-outside",
        ),
    ],
)
def test_invalid_experiments_are_refused_and_create_nothing(
    fresh: SandboxClient, sandbox: Sandbox, options: dict[str, Any], field: str
) -> None:
    arguments = {"prompt": "What is the capital of France?", **options}
    with pytest.raises(SandboxError) as caught:
        sandbox.run_experiment(**arguments)
    _assert_invalid(caught.value, field)
    assert list(fresh.list_experiments()) == []


def test_an_unknown_model_is_not_found_and_lists_the_served_ones(
    fresh: SandboxClient, sandbox: Sandbox
) -> None:
    with pytest.raises(NotFoundError) as caught:
        sandbox.run_experiment(model="gpt-5", prompt="hi")
    assert caught.value.reason == "MODEL_NOT_FOUND"
    assert "gpt-5" in caught.value.message
    assert "smollm2" in caught.value.message
    assert list(fresh.list_experiments()) == []


def test_paths_outside_the_workspace_are_refused_and_touch_nothing(
    stack: EmbeddedStack, sandbox: Sandbox, tmp_path: Path
) -> None:
    host_file = tmp_path / "host-secret.txt"
    host_file.write_text("host secret")
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: sandbox.write_file("../escape.txt", "x"), "file.path"),
        (lambda: sandbox.write_file(str(tmp_path / "escape.txt"), "x"), "file.path"),
        (lambda: sandbox.read_file("../../etc/passwd"), "path"),
        (lambda: sandbox.read_file(str(host_file)), "path"),
        (lambda: list(sandbox.list_files("..")), "path"),
        (lambda: sandbox.exec(["pwd"], cwd="../.."), "cwd"),
    ]
    for call, field in cases:
        with pytest.raises(SandboxError) as caught:
            call()
        _assert_invalid(caught.value, field)

    # A symlink made inside the sandbox does not lead file calls out of it.
    sandbox.exec(["ln", "-s", str(host_file), "link"], check=True)
    with pytest.raises(InvalidArgumentError):
        sandbox.read_file("link")
    with pytest.raises(InvalidArgumentError):
        sandbox.write_file("link", "overwritten")
    assert host_file.read_text() == "host secret"

    assert [f.path for f in sandbox.list_files()] == ["link"]
    assert not (tmp_path / "escape.txt").exists()
    workspaces = stack.data_dir / "orchestrator" / "workspaces"
    assert not list(workspaces.rglob("escape.txt"))


def test_calls_on_a_deleted_environment_fail_with_a_precondition(sandbox: Sandbox) -> None:
    sandbox.delete()
    for call in (
        lambda: sandbox.exec(["true"]),
        lambda: sandbox.write_file("a.txt", "x"),
        lambda: sandbox.run_experiment(model="echo", prompt="x"),
    ):
        with pytest.raises(FailedPreconditionError) as caught:
            call()
        assert caught.value.reason == "ENVIRONMENT_NOT_RUNNING"
        assert "create a new environment" in caught.value.message
    assert sandbox.delete().state.value == "TERMINATED"  # deleting twice is fine
    assert list(sandbox.list_experiments()) == []


def _raw_create(spec: environment_pb2.EnvironmentSpec | None = None, **fields: Any) -> Message:
    return requests_pb2.CreateEnvironmentRequest(
        spec=spec or environment_pb2.EnvironmentSpec(), request_id=str(uuid.uuid4()), **fields
    )


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        pytest.param(
            _raw_create(files=[environment_pb2.FileContent(path="../escape", content=b"x")]),
            "files[0].path",
            id="file-outside",
        ),
        pytest.param(
            _raw_create(files=[environment_pb2.FileContent(path="/tmp/escape", content=b"x")]),
            "files[0].path",
            id="file-absolute",
        ),
        pytest.param(
            _raw_create(
                environment_pb2.EnvironmentSpec(limits=common_pb2.ResourceLimits(memory_bytes=-1))
            ),
            "spec.limits.memory_bytes",
            id="negative-memory",
        ),
        pytest.param(
            _raw_create(
                environment_pb2.EnvironmentSpec(
                    limits=common_pb2.ResourceLimits(cpu_cores=float("nan"))
                )
            ),
            "spec.limits.cpu_cores",
            id="nan-cpu",
        ),
        pytest.param(
            _raw_create(environment_pb2.EnvironmentSpec(ttl=duration_pb2.Duration(seconds=-5))),
            "spec.ttl",
            id="negative-ttl",
        ),
        pytest.param(
            _raw_create(environment_pb2.EnvironmentSpec(network_policy=99)),  # type: ignore[arg-type]
            "spec.network_policy",
            id="unknown-network-policy",
        ),
    ],
)
def test_the_server_refuses_what_the_sdk_would_have_caught_first(
    stack: EmbeddedStack, request_: Message, field: str
) -> None:
    """The SDK checks some fields before sending; the server must not rely on that."""
    key = stack.tenant_key(unique_tenant("raw-input"))
    with grpc.insecure_channel(stack.target) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateEnvironment(
                request_, metadata=(("authorization", f"Bearer {key}"),), timeout=30
            )
    error = from_rpc_error(caught.value)
    _assert_invalid(error, field)
    assert error.reason == "INVALID_ARGUMENT"
    with stack.client(api_key=key) as owner:
        assert list(owner.list_environments(show_terminated=True)) == []
