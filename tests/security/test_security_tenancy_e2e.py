"""Tenant isolation through the real gateway and orchestrator (moved from tests/e2e).

Every GatewayService RPC is sent by tenant B at tenant A's resources. The
table of expectations must name every RPC of the service descriptor, so an RPC
added to the contract fails this test until someone decides what B may see.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from e2e_support import EmbeddedStack, unique_tenant
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from sandbox_sdk import (
    ApiKeyScope,
    AuthenticationError,
    EnvironmentState,
    ExperimentState,
    NotFoundError,
    PermissionDeniedError,
    RetryPolicy,
    SandboxClient,
    SandboxError,
)
from sandbox_sdk.api.v1 import (
    environment_pb2,
    experiment_pb2,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    process_pb2,
    requests_pb2,
    template_pb2,
)
from sandbox_sdk.errors import from_rpc_error

GATEWAY_SERVICE = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"]
SECRET_FILE = "secret.txt"
# A well-formed process id; tenant A's environment is not found before it is looked up.
PROCESS = "p-000000000000"


@dataclass(frozen=True)
class TenantA:
    """What tenant A owns: an environment with a file, a finished experiment, a key."""

    client: SandboxClient
    environment_id: str
    experiment_id: str
    key_id: str
    secret: bytes

    def traces(self) -> tuple[str, ...]:
        """Strings that must never appear in anything tenant B receives."""
        return (self.environment_id, self.experiment_id, self.key_id, self.secret.decode())


class Outcome(enum.Enum):
    """What tenant B gets back from an RPC aimed at tenant A."""

    NOT_FOUND = "not found: A's resource does not exist for B"
    PERMISSION_DENIED = "admin scope needed"
    OWN_DATA_ONLY = "succeeds, showing only B's own data"


def _requests(a: TenantA) -> dict[str, tuple[Outcome, Message]]:
    env, exp = a.environment_id, a.experiment_id
    # A template id on A's orchestrator (B cannot tell a foreign id from a missing one).
    tpl = f"tpl-{env.split('-')[1]}-{'0' * 16}"
    return {
        "CreateEnvironment": (
            Outcome.OWN_DATA_ONLY,
            requests_pb2.CreateEnvironmentRequest(
                spec=environment_pb2.EnvironmentSpec(labels={"owner": "b"}),
                request_id=str(uuid.uuid4()),
            ),
        ),
        "GetEnvironment": (
            Outcome.NOT_FOUND,
            requests_pb2.GetEnvironmentRequest(environment_id=env),
        ),
        "ListEnvironments": (
            Outcome.OWN_DATA_ONLY,
            requests_pb2.ListEnvironmentsRequest(show_terminated=True),
        ),
        "UpdateEnvironment": (
            Outcome.NOT_FOUND,
            requests_pb2.UpdateEnvironmentRequest(
                environment_id=env,
                spec=environment_pb2.EnvironmentSpec(labels={"owner": "b"}),
                update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
            ),
        ),
        "DeleteEnvironment": (
            Outcome.NOT_FOUND,
            requests_pb2.DeleteEnvironmentRequest(environment_id=env),
        ),
        "ExecCommand": (
            Outcome.NOT_FOUND,
            requests_pb2.ExecCommandRequest(environment_id=env, argv=["cat", SECRET_FILE]),
        ),
        "WriteFile": (
            Outcome.NOT_FOUND,
            requests_pb2.WriteFileRequest(
                environment_id=env,
                file=environment_pb2.FileContent(path=SECRET_FILE, content=b"tenant b was here"),
            ),
        ),
        "ReadFile": (
            Outcome.NOT_FOUND,
            requests_pb2.ReadFileRequest(environment_id=env, path=SECRET_FILE),
        ),
        "ListFiles": (Outcome.NOT_FOUND, requests_pb2.ListFilesRequest(environment_id=env)),
        "GetEnvironmentUsage": (
            Outcome.NOT_FOUND,
            requests_pb2.GetEnvironmentUsageRequest(environment_id=env),
        ),
        "StreamEnvironmentUsage": (
            Outcome.NOT_FOUND,
            requests_pb2.StreamEnvironmentUsageRequest(environment_id=env),
        ),
        "CreateExperiment": (
            Outcome.NOT_FOUND,
            requests_pb2.CreateExperimentRequest(
                environment_id=env,
                spec=experiment_pb2.ExperimentSpec(
                    model="echo", inputs=[experiment_pb2.ExperimentInput(prompt="from b")]
                ),
                request_id=str(uuid.uuid4()),
            ),
        ),
        "GetExperiment": (Outcome.NOT_FOUND, requests_pb2.GetExperimentRequest(experiment_id=exp)),
        "ListExperiments": (
            Outcome.OWN_DATA_ONLY,
            requests_pb2.ListExperimentsRequest(environment_id=env),
        ),
        "CancelExperiment": (
            Outcome.NOT_FOUND,
            requests_pb2.CancelExperimentRequest(experiment_id=exp),
        ),
        "GetExperimentResults": (
            Outcome.NOT_FOUND,
            requests_pb2.GetExperimentResultsRequest(experiment_id=exp),
        ),
        "StreamExperimentEvents": (
            Outcome.NOT_FOUND,
            requests_pb2.StreamExperimentEventsRequest(experiment_id=exp),
        ),
        "ListModels": (Outcome.OWN_DATA_ONLY, requests_pb2.ListModelsRequest()),
        "RemoveFile": (
            Outcome.NOT_FOUND,
            requests_pb2.RemoveFileRequest(environment_id=env, path=SECRET_FILE),
        ),
        "RenameFile": (
            Outcome.NOT_FOUND,
            requests_pb2.RenameFileRequest(
                environment_id=env, source_path=SECRET_FILE, destination_path="stolen"
            ),
        ),
        "MakeDirectory": (
            Outcome.NOT_FOUND,
            requests_pb2.MakeDirectoryRequest(environment_id=env, path="b-was-here"),
        ),
        "StatFile": (
            Outcome.NOT_FOUND,
            requests_pb2.StatFileRequest(environment_id=env, path=SECRET_FILE),
        ),
        "UploadDirectory": (
            Outcome.NOT_FOUND,
            requests_pb2.UploadDirectoryRequest(environment_id=env, path="upload"),
        ),
        "DownloadDirectory": (
            Outcome.NOT_FOUND,
            requests_pb2.DownloadDirectoryRequest(environment_id=env),
        ),
        # A build of bytes that are no image: accepted (B's own template), then it fails.
        "CreateTemplate": (
            Outcome.OWN_DATA_ONLY,
            requests_pb2.CreateTemplateRequest(
                spec=template_pb2.TemplateSpec(
                    oci_archive=template_pb2.OciArchiveBase(archive=b"not an image")
                ),
                request_id=str(uuid.uuid4()),
            ),
        ),
        "GetTemplate": (Outcome.NOT_FOUND, requests_pb2.GetTemplateRequest(template_id=tpl)),
        "ListTemplates": (Outcome.OWN_DATA_ONLY, requests_pb2.ListTemplatesRequest()),
        "DeleteTemplate": (
            Outcome.NOT_FOUND,
            requests_pb2.DeleteTemplateRequest(template_id=tpl),
        ),
        "StreamTemplateBuildEvents": (
            Outcome.NOT_FOUND,
            requests_pb2.StreamTemplateBuildEventsRequest(template_id=tpl),
        ),
        "SnapshotEnvironment": (
            Outcome.NOT_FOUND,
            requests_pb2.SnapshotEnvironmentRequest(environment_id=env),
        ),
        # Processes (#15): another tenant's environment is not found, whatever the process id.
        "StartProcess": (
            Outcome.NOT_FOUND,
            requests_pb2.StartProcessRequest(
                environment_id=env, argv=["cat", SECRET_FILE], request_id=str(uuid.uuid4())
            ),
        ),
        "GetProcess": (
            Outcome.NOT_FOUND,
            requests_pb2.GetProcessRequest(environment_id=env, process_id=PROCESS),
        ),
        "ListProcesses": (
            Outcome.NOT_FOUND,
            requests_pb2.ListProcessesRequest(environment_id=env, include_finished=True),
        ),
        "WaitProcess": (
            Outcome.NOT_FOUND,
            requests_pb2.WaitProcessRequest(environment_id=env, process_id=PROCESS),
        ),
        "StreamProcessOutput": (
            Outcome.NOT_FOUND,
            requests_pb2.StreamProcessOutputRequest(environment_id=env, process_id=PROCESS),
        ),
        "WriteProcessInput": (
            Outcome.NOT_FOUND,
            requests_pb2.WriteProcessInputRequest(
                environment_id=env, process_id=PROCESS, data=b"exit\n", close=True
            ),
        ),
        "SignalProcess": (
            Outcome.NOT_FOUND,
            requests_pb2.SignalProcessRequest(environment_id=env, process_id=PROCESS, signal=9),
        ),
        "ResizeProcessTerminal": (
            Outcome.NOT_FOUND,
            requests_pb2.ResizeProcessTerminalRequest(
                environment_id=env, process_id=PROCESS, size=process_pb2.PtySize(rows=5, cols=5)
            ),
        ),
        "ForwardPort": (
            Outcome.NOT_FOUND,
            requests_pb2.ForwardPortRequest(
                header=requests_pb2.ForwardPortHeader(environment_id=env, port=22)
            ),
        ),
        "CreateApiKey": (
            Outcome.PERMISSION_DENIED,
            gateway_service_pb2.CreateApiKeyRequest(
                tenant="team-b", scopes=[gateway_service_pb2.API_KEY_SCOPE_ADMIN]
            ),
        ),
        "ListApiKeys": (Outcome.PERMISSION_DENIED, gateway_service_pb2.ListApiKeysRequest()),
        "RevokeApiKey": (
            Outcome.PERMISSION_DENIED,
            gateway_service_pb2.RevokeApiKeyRequest(api_key_id=a.key_id),
        ),
    }


@pytest.fixture
def tenant_a(embedded: EmbeddedStack, operator_client: SandboxClient) -> Iterator[TenantA]:
    created = operator_client.create_api_key(
        tenant=unique_tenant("team-a"), scopes=["read", "write"]
    )
    secret = f"tenant a's secret {uuid.uuid4()}".encode()
    with embedded.client(api_key=created.secret) as a_client:
        sandbox = a_client.create_environment(labels={"owner": "a"}, files={SECRET_FILE: secret})
        experiment = sandbox.run_experiment(model="echo", prompt=secret.decode())
        experiment.wait(60)
        yield TenantA(a_client, sandbox.id, experiment.id, created.key.id, secret)
        sandbox.delete()


@pytest.fixture
def team_b_key(operator_client: SandboxClient) -> str:
    """Tenant B's key, made through the admin API as an operator would."""
    return operator_client.create_api_key(
        tenant="team-b", scopes=[ApiKeyScope.READ, "write"]
    ).secret


def _call(
    stub: gateway_service_pb2_grpc.GatewayServiceStub, name: str, request: Message, key: str
) -> list[Message]:
    """Sends one RPC as the key's tenant; the responses, or the SDK's typed error."""
    method: Callable[..., object] = getattr(stub, name)
    metadata = (("authorization", f"Bearer {key}"),)
    try:
        descriptor = GATEWAY_SERVICE.methods_by_name[name]
        if descriptor.client_streaming and descriptor.server_streaming:
            return list(method(iter([request]), metadata=metadata, timeout=5))  # type: ignore[call-overload]
        if descriptor.client_streaming:
            return [method(iter([request]), metadata=metadata, timeout=30)]  # type: ignore[list-item]
        if GATEWAY_SERVICE.methods_by_name[name].server_streaming:
            # A stream that is not refused would follow forever: take what is there.
            return list(method(request, metadata=metadata, timeout=5))  # type: ignore[call-overload]
        return [method(request, metadata=metadata, timeout=30)]  # type: ignore[list-item]
    except grpc.RpcError as error:
        raise from_rpc_error(error) from error


def test_every_rpc_keeps_tenant_b_out_of_tenant_a(
    embedded: EmbeddedStack, tenant_a: TenantA, team_b_key: str, operator_client: SandboxClient
) -> None:
    expectations = _requests(tenant_a)
    assert set(expectations) == set(GATEWAY_SERVICE.methods_by_name), (
        "a GatewayService RPC has no tenant-isolation expectation here; add it"
    )
    channel = grpc.insecure_channel(embedded.target)
    stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
    b_environments: list[str] = []
    try:
        for method in GATEWAY_SERVICE.methods:
            outcome, request = expectations[method.name]
            if outcome is Outcome.OWN_DATA_ONLY:
                responses = _call(stub, method.name, request, team_b_key)
                received = " ".join(str(response) for response in responses)
                for trace in tenant_a.traces():
                    assert trace not in received, f"{method.name} showed tenant A's {trace!r}"
                if method.name == "CreateEnvironment":
                    [response] = responses
                    b_environments.append(response.environment.id)  # type: ignore[attr-defined]
                continue
            expected_error = (
                NotFoundError if outcome is Outcome.NOT_FOUND else PermissionDeniedError
            )
            with pytest.raises(SandboxError) as caught:
                _call(stub, method.name, request, team_b_key)
            assert isinstance(caught.value, expected_error), (method.name, caught.value)
            for trace in tenant_a.traces()[2:]:
                assert trace not in str(caught.value), f"{method.name} error leaked {trace!r}"
    finally:
        for environment_id in b_environments:
            stub.DeleteEnvironment(
                requests_pb2.DeleteEnvironmentRequest(environment_id=environment_id),
                metadata=(("authorization", f"Bearer {team_b_key}"),),
                timeout=30,
            )
        channel.close()

    # Tenant A's things are untouched.
    a = tenant_a.client
    sandbox = a.get_environment(tenant_a.environment_id)
    assert sandbox.state is EnvironmentState.RUNNING
    assert sandbox.info.labels == {"owner": "a"}
    assert sandbox.read_file(SECRET_FILE) == tenant_a.secret
    assert [e.id for e in a.list_environments()] == [tenant_a.environment_id]
    experiments = list(a.list_experiments())
    assert [e.id for e in experiments] == [tenant_a.experiment_id]
    assert experiments[0].info.state is ExperimentState.SUCCEEDED
    [key] = [k for k in operator_client.list_api_keys(show_revoked=True) if k.id == tenant_a.key_id]
    assert key.active
    # ... and A, though its key came from an admin, sees nothing of B either.
    assert b_environments
    with pytest.raises(NotFoundError):
        a.get_environment(b_environments[0])


def test_the_sdk_surfaces_not_found_for_another_tenants_resources(
    embedded: EmbeddedStack, tenant_a: TenantA, team_b_key: str
) -> None:
    with embedded.client(api_key=team_b_key) as b:
        with pytest.raises(NotFoundError) as caught:
            b.get_environment(tenant_a.environment_id)
        assert caught.value.reason == "ENVIRONMENT_NOT_FOUND"
        with pytest.raises(NotFoundError) as caught:
            b.get_experiment(tenant_a.experiment_id)
        assert caught.value.reason == "EXPERIMENT_NOT_FOUND"
        assert all(s.id != tenant_a.environment_id for s in b.list_environments())
        assert all(e.id != tenant_a.experiment_id for e in b.list_experiments())
        assert b.list_models()  # the model catalogue is not tenant data
        with pytest.raises(PermissionDeniedError) as denied:
            list(b.list_api_keys())
        assert denied.value.reason == "SCOPE_MISSING"


def test_an_expired_key_is_refused(embedded: EmbeddedStack, operator_client: SandboxClient) -> None:
    created = operator_client.create_api_key(tenant=unique_tenant("short-lived"), ttl="1s")
    with embedded.client(api_key=created.secret, retry=RetryPolicy.disabled()) as holder:
        assert list(holder.list_environments()) == []  # valid, and now cached by the gateway
        time.sleep(1.2)  # waits past the expiry; nothing about timing is asserted
        with pytest.raises(AuthenticationError) as caught:
            list(holder.list_environments())
    assert caught.value.reason == "API_KEY_EXPIRED"
    [listed] = operator_client.list_api_keys(tenant=created.key.tenant, show_revoked=True)
    assert not listed.active
