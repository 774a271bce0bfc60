"""Tenant isolation: every GatewayService RPC, tried by tenant A on tenant B's resources.

(Moved from tests/gateway; the real-server version is test_security_tenancy_e2e.py.)

The table below must name every RPC of the service descriptor, so an RPC added
to the contract fails this test until someone decides what isolation means for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from gateway_callers import Caller, StartGateway, StartOrchestrator
from gateway_testkit import FakeOrchestrator, reason
from google.protobuf import field_mask_pb2

from sandbox_sdk.api.v1 import environment_pb2, experiment_pb2, requests_pb2
from sandbox_sdk.api.v1 import gateway_service_pb2 as gw
from sandbox_sdk.server.gateway.api_keys import Scope
from sandbox_sdk.server.gateway.methods import GATEWAY_SERVICE
from sandbox_sdk.server.gateway.server import GatewayServer


@dataclass
class Resources:
    """Tenant B's environment and experiment."""

    environment_id: str
    experiment_id: str


ById = Callable[[Resources], Any]
# RPC name -> request aimed at tenant B's resources; every such call must be NOT_FOUND.
FOREIGN_ID_REQUESTS: dict[str, ById] = {
    "GetEnvironment": lambda r: requests_pb2.GetEnvironmentRequest(environment_id=r.environment_id),
    "UpdateEnvironment": lambda r: requests_pb2.UpdateEnvironmentRequest(
        environment_id=r.environment_id,
        spec=environment_pb2.EnvironmentSpec(labels={"owner": "a"}),
        update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
    ),
    "DeleteEnvironment": lambda r: requests_pb2.DeleteEnvironmentRequest(
        environment_id=r.environment_id
    ),
    "ExecCommand": lambda r: requests_pb2.ExecCommandRequest(
        environment_id=r.environment_id, argv=["cat", "secret.txt"]
    ),
    "WriteFile": lambda r: requests_pb2.WriteFileRequest(
        environment_id=r.environment_id,
        file=environment_pb2.FileContent(path="x.txt", content=b"x"),
    ),
    "ReadFile": lambda r: requests_pb2.ReadFileRequest(
        environment_id=r.environment_id, path="secret.txt"
    ),
    "ListFiles": lambda r: requests_pb2.ListFilesRequest(environment_id=r.environment_id),
    "GetEnvironmentUsage": lambda r: requests_pb2.GetEnvironmentUsageRequest(
        environment_id=r.environment_id
    ),
    "StreamEnvironmentUsage": lambda r: requests_pb2.StreamEnvironmentUsageRequest(
        environment_id=r.environment_id
    ),
    "CreateExperiment": lambda r: requests_pb2.CreateExperimentRequest(
        environment_id=r.environment_id,
        spec=experiment_pb2.ExperimentSpec(
            model="scripted", inputs=[experiment_pb2.ExperimentInput(prompt="hi")]
        ),
    ),
    "GetExperiment": lambda r: requests_pb2.GetExperimentRequest(experiment_id=r.experiment_id),
    "CancelExperiment": lambda r: requests_pb2.CancelExperimentRequest(
        experiment_id=r.experiment_id
    ),
    "GetExperimentResults": lambda r: requests_pb2.GetExperimentResultsRequest(
        experiment_id=r.experiment_id
    ),
    "StreamExperimentEvents": lambda r: requests_pb2.StreamExperimentEventsRequest(
        experiment_id=r.experiment_id
    ),
}
# RPCs that list: tenant A must see none of B's resources.
LISTS = {
    "ListEnvironments": (
        requests_pb2.ListEnvironmentsRequest(show_terminated=True),
        "environments",
    ),
    "ListExperiments": (requests_pb2.ListExperimentsRequest(), "experiments"),
}
# RPCs about no tenant's resource, or only for admins.
NOT_TENANT_RESOURCES = {
    "CreateEnvironment": "creates a resource owned by the caller (checked below)",
    "ListModels": "the model catalogue is the same for every tenant",
    "CreateApiKey": "admin only: a tenant's read/write key is refused",
    "ListApiKeys": "admin only: a tenant's read/write key is refused",
    "RevokeApiKey": "admin only: a tenant's read/write key is refused",
}

# RPCs the fake orchestrator does not serve: test_security_tenancy_e2e.py tries each
# of them as another tenant against the real server.
_REAL_SERVER_ONLY = "the fake orchestrator does not serve it; checked in test_security_tenancy_e2e"
CHECKED_AGAINST_THE_REAL_SERVER = dict.fromkeys(
    (
        # Files and templates (#14).
        "RemoveFile",
        "RenameFile",
        "MakeDirectory",
        "StatFile",
        "UploadDirectory",
        "DownloadDirectory",
        "CreateTemplate",
        "GetTemplate",
        "ListTemplates",
        "DeleteTemplate",
        "StreamTemplateBuildEvents",
        "SnapshotEnvironment",
        # Processes and port forwarding (#15).
        "StartProcess",
        "GetProcess",
        "ListProcesses",
        "WaitProcess",
        "StreamProcessOutput",
        "WriteProcessInput",
        "SignalProcess",
        "ResizeProcessTerminal",
        "ForwardPort",
    ),
    _REAL_SERVER_ONLY,
)


def test_the_table_covers_every_rpc() -> None:
    covered = set(FOREIGN_ID_REQUESTS) | set(LISTS) | set(NOT_TENANT_RESOURCES)
    covered |= set(CHECKED_AGAINST_THE_REAL_SERVER)
    assert covered == {m.name for m in GATEWAY_SERVICE.methods}


async def _invoke(caller: Caller, name: str, request: Any) -> Any:
    method = getattr(caller.stub, name)
    if GATEWAY_SERVICE.methods_by_name[name].server_streaming:
        return [message async for message in method(request, metadata=caller.metadata)]
    return await method(request, metadata=caller.metadata)


@dataclass
class World:
    """Two orchestrators behind a gateway; tenants A and B; B's resources."""

    gateway: GatewayServer
    orchestrators: list[FakeOrchestrator]
    tenant_a: Caller
    tenant_b: Caller
    b: Resources


@pytest.fixture
async def two_tenants(
    start_orchestrator: StartOrchestrator,
    start_gateway: StartGateway,
    caller_for: Callable[..., Caller],
) -> World:
    orchestrators = [await start_orchestrator("o1"), await start_orchestrator("o2")]
    gateway = await start_gateway(*orchestrators)
    tenant_a = caller_for(gateway, "tenant-a")
    tenant_b = caller_for(gateway, "tenant-b")
    env = await _invoke(tenant_b, "CreateEnvironment", requests_pb2.CreateEnvironmentRequest())
    env_id = env.environment.id
    await _invoke(
        tenant_b,
        "WriteFile",
        requests_pb2.WriteFileRequest(
            environment_id=env_id,
            file=environment_pb2.FileContent(path="secret.txt", content=b"b's secret"),
        ),
    )
    create_experiment = FOREIGN_ID_REQUESTS["CreateExperiment"](Resources(env_id, ""))
    experiment = await _invoke(tenant_b, "CreateExperiment", create_experiment)
    await _invoke(tenant_a, "CreateEnvironment", requests_pb2.CreateEnvironmentRequest())
    return World(
        gateway, orchestrators, tenant_a, tenant_b, Resources(env_id, experiment.experiment.id)
    )


@pytest.mark.parametrize("name", sorted(FOREIGN_ID_REQUESTS))
async def test_another_tenants_resources_are_not_found(two_tenants: World, name: str) -> None:
    tenant_a, tenant_b, resources = two_tenants.tenant_a, two_tenants.tenant_b, two_tenants.b
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _invoke(tenant_a, name, FOREIGN_ID_REQUESTS[name](resources))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(caught.value) in {"ENVIRONMENT_NOT_FOUND", "EXPERIMENT_NOT_FOUND"}
    # Tenant B's resources are untouched and still B's.
    env = await _invoke(
        tenant_b,
        "GetEnvironment",
        requests_pb2.GetEnvironmentRequest(environment_id=resources.environment_id),
    )
    assert env.environment.state == environment_pb2.ENVIRONMENT_STATE_RUNNING
    assert dict(env.environment.spec.labels) == {}
    owner = resources.environment_id.split("-")[1]
    state = next(o.state for o in two_tenants.orchestrators if o.state.orchestrator_id == owner)
    assert len([e for e in state.experiments.values() if e[0] == "tenant-a"]) == 0


@pytest.mark.parametrize("name", sorted(LISTS))
async def test_lists_show_only_the_callers_resources(two_tenants: World, name: str) -> None:
    tenant_a, resources = two_tenants.tenant_a, two_tenants.b
    request, field = LISTS[name]
    response = await _invoke(tenant_a, name, request)
    listed = {item.id for item in getattr(response, field)}
    assert resources.environment_id not in listed
    assert resources.experiment_id not in listed
    if name == "ListEnvironments":
        assert len(listed) == 1  # tenant A's own environment


async def test_created_environments_belong_to_the_creator(
    two_tenants: World,
) -> None:
    tenant_a, tenant_b = two_tenants.tenant_a, two_tenants.tenant_b
    created = await _invoke(tenant_a, "CreateEnvironment", requests_pb2.CreateEnvironmentRequest())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _invoke(
            tenant_b,
            "GetEnvironment",
            requests_pb2.GetEnvironmentRequest(environment_id=created.environment.id),
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_models_are_listed_for_any_tenant(
    two_tenants: World,
) -> None:
    tenant_a = two_tenants.tenant_a
    models = await _invoke(tenant_a, "ListModels", requests_pb2.ListModelsRequest())
    assert [m.name for m in models.models] == ["scripted"]


@pytest.mark.parametrize(
    ("name", "request_"),
    [
        ("CreateApiKey", gw.CreateApiKeyRequest(tenant="tenant-b", scopes=[1])),
        ("ListApiKeys", gw.ListApiKeysRequest(tenant="tenant-b")),
        ("RevokeApiKey", gw.RevokeApiKeyRequest(api_key_id="sk_0000000000000000")),
    ],
)
async def test_key_administration_is_refused_to_tenant_keys(
    two_tenants: World, name: str, request_: Any
) -> None:
    tenant_a = two_tenants.tenant_a
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _invoke(tenant_a, name, request_)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(caught.value) == "SCOPE_MISSING"


async def test_admin_keys_reach_only_their_own_tenants_resources(
    two_tenants: World, caller_for: Callable[..., Caller]
) -> None:
    admin = caller_for(two_tenants.gateway, "ops", (Scope.ADMIN,))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _invoke(
            admin,
            "GetEnvironment",
            requests_pb2.GetEnvironmentRequest(environment_id=two_tenants.b.environment_id),
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
