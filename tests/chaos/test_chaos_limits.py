"""Oversized fields are INVALID_ARGUMENT naming the field, with a status that fits a trailer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from chaos_support import ChaosServer, Tenant

from sandbox_sdk.api.v1 import requests_pb2

# gRPC clients refuse trailers past 8 KiB; a clipped status stays well under it.
TRAILER_BUDGET_BYTES = 6 * 1024


def _refusal(call: Callable[[], Any]) -> grpc.RpcError:
    try:
        call()
    except grpc.RpcError as error:
        return error
    raise AssertionError("the request was accepted")


def _trailer_bytes(error: grpc.RpcError) -> int:
    trailers = error.trailing_metadata() or ()
    size = sum(len(key) + len(value) for key, value in trailers)
    return size + len((error.details() or "").encode())


@pytest.fixture(scope="module")
def limits_tenant(chaos_server: ChaosServer) -> Iterator[tuple[Tenant, str]]:
    """A tenant with one environment, deleted after the module."""
    tenant = chaos_server.tenant("limits")
    environment = tenant.create_environment()
    yield tenant, environment
    tenant.call(
        "DeleteEnvironment", requests_pb2.DeleteEnvironmentRequest(environment_id=environment)
    )


@pytest.mark.parametrize(
    ("method", "build", "field"),
    [
        (
            "GetExperiment",
            lambda env: requests_pb2.GetExperimentRequest(experiment_id="exp-" + "a" * 20_000),
            "experiment_id",
        ),
        (
            "GetEnvironment",
            lambda env: requests_pb2.GetEnvironmentRequest(environment_id="é" * 20_000),
            "environment_id",
        ),
        (
            "ReadFile",
            lambda env: requests_pb2.ReadFileRequest(environment_id=env, path="d/" * 2_500),
            "path",
        ),
        (
            "ListFiles",
            lambda env: requests_pb2.ListFilesRequest(environment_id=env, path="x" * 5_000),
            "path",
        ),
        (
            "ListExperiments",
            lambda env: requests_pb2.ListExperimentsRequest(
                label_selector={f"k{i}": "v" for i in range(1_000)}
            ),
            "label_selector",
        ),
    ],
)
def test_an_oversized_field_is_invalid_argument_that_fits_a_trailer(
    limits_tenant: tuple[Tenant, str],
    method: str,
    build: Callable[[str], Any],
    field: str,
) -> None:
    tenant, environment = limits_tenant

    error = _refusal(lambda: tenant.call(method, build(environment)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "")
    assert _trailer_bytes(error) < TRAILER_BUDGET_BYTES


def test_an_overlong_request_id_is_replaced_not_echoed(limits_tenant: tuple[Tenant, str]) -> None:
    tenant, _ = limits_tenant
    request = requests_pb2.GetExperimentRequest(experiment_id="not-an-id")

    error = _refusal(
        lambda: tenant.stub.GetExperiment(
            request, metadata=(*tenant.metadata, ("x-request-id", "r" * 7_000)), timeout=10
        )
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _trailer_bytes(error) < TRAILER_BUDGET_BYTES
