"""The operator's runtime policy: which isolation runtime a create gets, or why it gets none.

``resolve_runtime`` is a pure function of the request, the tenant, the settings and what
this orchestrator has installed, so its table is checked directly; the same policy
through the gateway is ``tests/e2e/test_e2e_runtimes.py``.
"""

from __future__ import annotations

import json
from dataclasses import replace

import grpc
import pytest
from pydantic import ValidationError

from sandbox_sdk.api.v1 import requests_pb2
from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.models.environment import IsolationRuntime
from sandbox_sdk.server.orchestrator.sandbox import validation
from sandbox_sdk.server.orchestrator.sandbox.runtime_policy import resolve_runtime
from sandbox_sdk.server.orchestrator.sandbox.settings import SandboxSettings
from sandbox_sdk.server.orchestrator.sandbox.store import _spec_from_json, _spec_to_json
from sandbox_sdk.server.status import ServiceError

UNSPECIFIED = IsolationRuntime.UNSPECIFIED
BUBBLEWRAP = IsolationRuntime.BUBBLEWRAP
GVISOR = IsolationRuntime.GVISOR
BOTH = frozenset({BUBBLEWRAP, GVISOR})
ONLY_BUBBLEWRAP = frozenset({BUBBLEWRAP})
ONLY_GVISOR = frozenset({GVISOR})

RESTRICTED = "tenant-x"
OTHER = "tenant-y"


def _settings(default: IsolationRuntime = BUBBLEWRAP) -> SandboxSettings:
    return SandboxSettings(default_runtime=default, minimum_runtime_by_tenant={RESTRICTED: GVISOR})


@pytest.mark.parametrize(
    ("requested", "tenant", "default", "resolved"),
    [
        pytest.param(UNSPECIFIED, OTHER, BUBBLEWRAP, BUBBLEWRAP, id="default-bubblewrap"),
        pytest.param(UNSPECIFIED, OTHER, GVISOR, GVISOR, id="default-gvisor"),
        pytest.param(UNSPECIFIED, RESTRICTED, BUBBLEWRAP, GVISOR, id="minimum-above-default"),
        pytest.param(UNSPECIFIED, RESTRICTED, GVISOR, GVISOR, id="minimum-equals-default"),
        pytest.param(BUBBLEWRAP, OTHER, GVISOR, BUBBLEWRAP, id="explicit-below-default"),
        pytest.param(GVISOR, OTHER, BUBBLEWRAP, GVISOR, id="explicit-above-default"),
        pytest.param(GVISOR, RESTRICTED, BUBBLEWRAP, GVISOR, id="explicit-at-minimum"),
    ],
)
def test_a_runtime_resolves_to_the_request_or_the_stronger_of_default_and_minimum(
    requested: IsolationRuntime,
    tenant: str,
    default: IsolationRuntime,
    resolved: IsolationRuntime,
) -> None:
    assert resolve_runtime(requested, tenant, _settings(default), BOTH) is resolved


@pytest.mark.parametrize("default", [BUBBLEWRAP, GVISOR])
def test_asking_for_a_runtime_weaker_than_the_tenants_minimum_is_refused(
    default: IsolationRuntime,
) -> None:
    with pytest.raises(ServiceError) as refused:
        resolve_runtime(BUBBLEWRAP, RESTRICTED, _settings(default), BOTH)
    error = refused.value
    assert error.code is grpc.StatusCode.PERMISSION_DENIED
    assert error.reason == ErrorReason.RUNTIME_NOT_ALLOWED
    assert "minimum_runtime_by_tenant" in error.message  # names the policy
    assert "leave the runtime out" in error.message  # and what to do instead
    assert "runtime='gvisor'" in error.message


def test_the_restriction_is_the_tenants_own() -> None:
    assert resolve_runtime(BUBBLEWRAP, OTHER, _settings(), BOTH) is BUBBLEWRAP


@pytest.mark.parametrize(
    ("requested", "tenant", "default"),
    [
        pytest.param(GVISOR, OTHER, BUBBLEWRAP, id="explicit"),
        pytest.param(UNSPECIFIED, OTHER, GVISOR, id="by-default"),
        pytest.param(UNSPECIFIED, RESTRICTED, BUBBLEWRAP, id="by-minimum"),
    ],
)
def test_gvisor_not_installed_is_refused_with_the_install_hint_never_a_fallback(
    requested: IsolationRuntime, tenant: str, default: IsolationRuntime
) -> None:
    with pytest.raises(ServiceError) as refused:
        resolve_runtime(requested, tenant, _settings(default), ONLY_BUBBLEWRAP)
    error = refused.value
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == ErrorReason.RUNTIME_NOT_INSTALLED
    assert "apt-get install runsc" in error.message


def test_the_alternative_offered_is_one_the_tenant_may_have() -> None:
    with pytest.raises(ServiceError) as explicit:
        resolve_runtime(GVISOR, OTHER, _settings(), ONLY_BUBBLEWRAP)
    assert "runtime='bubblewrap', installed here" in explicit.value.message
    with pytest.raises(ServiceError) as restricted:
        resolve_runtime(UNSPECIFIED, RESTRICTED, _settings(), ONLY_BUBBLEWRAP)
    assert "bubblewrap" not in restricted.value.message.split("install it")[1]


def test_bubblewrap_not_installed_is_refused_with_its_own_hint() -> None:
    with pytest.raises(ServiceError) as refused:
        resolve_runtime(UNSPECIFIED, OTHER, _settings(), ONLY_GVISOR)
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "apt-get install bubblewrap" in refused.value.message
    assert "runtime='gvisor'" in refused.value.message


def test_operators_write_runtimes_in_any_case_and_must_name_one() -> None:
    settings = SandboxSettings.model_validate(
        {"default_runtime": "gvisor", "minimum_runtime_by_tenant": {"a": "GVisor"}}
    )
    assert settings.default_runtime is GVISOR
    assert settings.minimum_runtime_by_tenant == {"a": GVISOR}
    assert SandboxSettings().default_runtime is BUBBLEWRAP
    assert SandboxSettings().minimum_runtime_by_tenant == {}
    for bad in (
        {"default_runtime": "unspecified"},
        {"minimum_runtime_by_tenant": {"a": "UNSPECIFIED"}},
        {"default_runtime": "firecracker"},
    ):
        with pytest.raises(ValidationError):
            SandboxSettings.model_validate(bad)


def test_an_unknown_runtime_number_is_a_field_violation() -> None:
    request = requests_pb2.CreateEnvironmentRequest()
    request.spec.runtime = 7  # type: ignore[assignment]  # what a newer or hostile client sends
    with pytest.raises(ServiceError) as refused:
        validation.new_environment(request, SandboxSettings())
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in refused.value.field_violations] == ["spec.runtime"]


def test_a_request_without_a_runtime_leaves_it_to_the_policy() -> None:
    new = validation.new_environment(requests_pb2.CreateEnvironmentRequest(), SandboxSettings())
    assert new.spec.runtime is UNSPECIFIED


def test_stored_specs_keep_their_runtime_and_older_ones_read_as_bubblewrap() -> None:
    new = validation.new_environment(requests_pb2.CreateEnvironmentRequest(), SandboxSettings())
    spec = replace(new.spec, runtime=GVISOR)
    assert _spec_from_json(_spec_to_json(spec)) == spec
    older = json.loads(_spec_to_json(spec))
    del older["runtime"]
    assert _spec_from_json(json.dumps(older)).runtime is BUBBLEWRAP
