"""Each service in the descriptors has exactly the RPCs the hand-written layer exposes.

A new RPC added to proto/ fails here until the SDK (sync and async), the
gateway and, for resource calls, the orchestrator all serve it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sandbox_sdk.api.v1 import gateway_service_pb2, orchestrator_service_pb2
from sandbox_sdk.client import calls
from sandbox_sdk.server.gateway import methods
from sandbox_sdk.server.orchestrator import servicer
from sandbox_sdk.server.orchestrator.experiments import ExperimentHandlers
from sandbox_sdk.server.orchestrator.sandbox import EnvironmentHandlers

_GATEWAY_SERVICE = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"]
_ORCHESTRATOR_SERVICE = orchestrator_service_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]
GATEWAY = {m.name for m in _GATEWAY_SERVICE.methods}
ORCHESTRATOR = {m.name for m in _ORCHESTRATOR_SERVICE.methods}
CLIENT = Path(calls.__file__).parent
HANDLES = [
    "client.py",
    "sandbox.py",
    "experiment.py",
    "template.py",
    "streams.py",
    "process.py",
    "port_forward.py",
]
SYNC_FILES = [f"_sync/{name}" for name in HANDLES]
ASYNC_FILES = [f"_async/{name}" for name in HANDLES]


def _rpcs_called_in(files: list[str]) -> set[str]:
    source = "\n".join((CLIENT / name).read_text() for name in files)
    return {name for name in GATEWAY if re.search(rf'["\']{name}["\']', source)}


def test_the_sdk_knows_every_gateway_rpc_and_how_to_retry_it() -> None:
    assert calls.ALL_METHODS == GATEWAY


@pytest.mark.parametrize("files", [SYNC_FILES, ASYNC_FILES], ids=["sync", "async"])
def test_the_sdk_calls_every_gateway_rpc(files: list[str]) -> None:
    assert _rpcs_called_in(files) == GATEWAY


def test_the_gateway_serves_exactly_its_descriptor() -> None:
    assert set(methods.METHODS) == GATEWAY


def test_the_orchestrator_binds_exactly_its_descriptor() -> None:
    bound = servicer.ENVIRONMENT_RPCS | servicer.EXPERIMENT_RPCS | servicer.TEMPLATE_RPCS
    assert bound == ORCHESTRATOR
    assert not servicer.ENVIRONMENT_RPCS & servicer.EXPERIMENT_RPCS
    for name in servicer.ENVIRONMENT_RPCS:
        assert callable(getattr(EnvironmentHandlers, name, None)), name
    for name in servicer.EXPERIMENT_RPCS:
        assert callable(getattr(ExperimentHandlers, name, None)), name
