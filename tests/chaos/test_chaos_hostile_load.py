"""Hostile loads from one tenant never stop another tenant's calls.

Each test puts one kind of load on the real server (a big experiment on the
fast scripted model, a catastrophic regular expression, listing a huge
directory) while a bystander tenant keeps calling GetEnvironment and the
health check. A bystander call that fails or misses its deadline (5 s, far
above the few milliseconds they take) fails the test; nothing here asserts
on latency.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from chaos_support import ChaosServer, Tenant, bystander, wait_until

from sandbox_sdk.api.v1 import experiment_pb2, requests_pb2

# Enough calls that the bystander demonstrably ran alongside the load.
MIN_BYSTANDER_CALLS = 10
EXPERIMENT_TIMEOUT_SECONDS = 180.0


@pytest.fixture(autouse=True)
def _environments_deleted_after(chaos_server: ChaosServer) -> Iterator[None]:
    """Each test's environments go when it ends, so the shared server keeps its room."""
    yield
    chaos_server.delete_all_environments()


def _experiment(tenant: Tenant, environment_id: str, spec: experiment_pb2.ExperimentSpec) -> str:
    request = requests_pb2.CreateExperimentRequest(environment_id=environment_id, spec=spec)
    return str(tenant.call("CreateExperiment", request).experiment.id)


def _finished(tenant: Tenant, experiment_id: str) -> experiment_pb2.Experiment | None:
    request = requests_pb2.GetExperimentRequest(experiment_id=experiment_id)
    experiment = tenant.call("GetExperiment", request).experiment
    final = experiment.state not in (
        experiment_pb2.EXPERIMENT_STATE_QUEUED,
        experiment_pb2.EXPERIMENT_STATE_RUNNING,
    )
    return experiment if final else None


def _wait_finished(tenant: Tenant, experiment_id: str) -> experiment_pb2.Experiment:
    wait_until(
        lambda: _finished(tenant, experiment_id) is not None,
        EXPERIMENT_TIMEOUT_SECONDS,
        f"experiment {experiment_id} to finish",
    )
    finished = _finished(tenant, experiment_id)
    assert finished is not None
    return finished


def test_big_fast_experiments_do_not_stall_other_tenants(chaos_server: ChaosServer) -> None:
    hostile, other = chaos_server.tenant("hostile"), chaos_server.tenant("bystander")
    hostile_environment = hostile.create_environment()
    other_environment = other.create_environment()
    many = experiment_pb2.ExperimentSpec(model="scripted")
    for index in range(10_000):
        many.inputs.add(prompt=f"short prompt number {index}", expected="x")
    many.scorers.add().exact_match.SetInParent()
    long_prompts = experiment_pb2.ExperimentSpec(model="scripted")
    for index in range(30):
        long_prompts.inputs.add(prompt=f"{index} " + "very long prompt " * 5_800)

    with bystander(chaos_server, other, other_environment) as report:
        ids = [
            _experiment(hostile, hostile_environment, many),
            _experiment(hostile, hostile_environment, long_prompts),
        ]
        finished = [_wait_finished(hostile, experiment_id) for experiment_id in ids]

    assert report.failures == []
    assert report.calls >= MIN_BYSTANDER_CALLS
    assert [e.state for e in finished] == [experiment_pb2.EXPERIMENT_STATE_SUCCEEDED] * 2
    assert [e.completed_samples for e in finished] == [10_000, 30]
    assert chaos_server.healthy()


def test_an_inline_dataset_past_the_cap_is_refused_naming_the_alternative(
    chaos_server: ChaosServer,
) -> None:
    tenant = chaos_server.tenant("toomany")
    environment = tenant.create_environment()
    spec = experiment_pb2.ExperimentSpec(model="scripted")
    for index in range(10_001):
        spec.inputs.add(prompt=f"p{index}")

    try:
        _experiment(tenant, environment, spec)
    except grpc.RpcError as error:
        refused = error
    else:
        raise AssertionError("10,001 inline inputs were accepted")

    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 10000" in (refused.details() or "")
    assert "spec.dataset_path" in (refused.details() or "")


def test_a_catastrophic_regex_scorer_does_not_stall_other_tenants(
    chaos_server: ChaosServer,
) -> None:
    hostile, other = chaos_server.tenant("regex"), chaos_server.tenant("bystander")
    hostile_environment = hostile.create_environment()
    other_environment = other.create_environment()
    spec = experiment_pb2.ExperimentSpec(model="scripted")
    for length in (28, 40, 64, 5_000, 90_000):
        spec.inputs.add(prompt="a" * length + "!")
    spec.repeats = 100
    spec.scorers.add(name="evil").regex.pattern = "^(a+)+$"
    spec.scorers.add(name="nested").regex.pattern = "^((a|aa)*)*b$"
    spec.parameters.max_tokens = 4000

    with bystander(chaos_server, other, other_environment) as report:
        experiment = _wait_finished(hostile, _experiment(hostile, hostile_environment, spec))

    assert report.failures == []
    assert report.calls >= MIN_BYSTANDER_CALLS
    assert experiment.state == experiment_pb2.EXPERIMENT_STATE_SUCCEEDED
    scores, token = [], ""
    while True:  # small pages: the outputs are up to 90,000 characters each
        page = hostile.call(
            "GetExperimentResults",
            requests_pb2.GetExperimentResultsRequest(
                experiment_id=experiment.id, page_size=20, page_token=token
            ),
        )
        scores += [(dict(s.scores), dict(s.score_errors)) for s in page.samples]
        token = page.next_page_token
        if not token:
            break
    assert scores == [({"evil": 0.0, "nested": 0.0}, {})] * 500
    assert chaos_server.healthy()


def test_a_backtracking_only_pattern_is_refused_naming_the_field(
    chaos_server: ChaosServer,
) -> None:
    tenant = chaos_server.tenant("backref")
    environment = tenant.create_environment()
    spec = experiment_pb2.ExperimentSpec(model="scripted")
    spec.inputs.add(prompt="abab")
    spec.scorers.add(name="ok").regex.pattern = r"\d+"
    spec.scorers.add(name="backref").regex.pattern = r"(ab)\1"

    try:
        _experiment(tenant, environment, spec)
    except grpc.RpcError as error:
        refused = error
    else:
        raise AssertionError("a backreference pattern was accepted")

    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.scorers[1].regex.pattern" in (refused.details() or "")
    assert "RE2" in (refused.details() or "")


def _list_all(tenant: Tenant, environment_id: str, path: str) -> list[str]:
    """Every entry, page by page, retrying the transient UNAVAILABLE a large directory's first
    page may get (as the gateway and the SDK do)."""
    paths: list[str] = []
    token = ""
    while True:
        request = requests_pb2.ListFilesRequest(
            environment_id=environment_id, path=path, page_size=1000, page_token=token
        )
        try:
            response = tenant.call("ListFiles", request)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            time.sleep(0.2)
            continue
        paths += [file.path for file in response.files]
        token = response.next_page_token
        if not token:
            return paths


def test_listing_a_huge_directory_does_not_stall_other_tenants(chaos_server: ChaosServer) -> None:
    hostile, other = chaos_server.tenant("lister"), chaos_server.tenant("bystander")
    hostile_environment = hostile.create_environment()
    other_environment = other.create_environment()
    entries = 100_000
    # Hard links: directory entries without an inode each (ext4 allows 65,000 per file).
    hostile.exec(
        hostile_environment,
        [
            "python3",
            "-c",
            "import os\n"
            "os.mkdir('big')\n"
            f"for i in range({entries}):\n"
            "    name = f'big/e{i:06d}'\n"
            "    if i % 50000 == 0:\n"
            "        first = name\n"
            "        open(first, 'w').close()\n"
            "    else:\n"
            "        os.link(first, name)\n",
        ],
    )
    listings: list[list[str]] = []
    failures: list[BaseException] = []

    def list_repeatedly() -> None:
        try:
            for _ in range(3):
                listings.append(_list_all(hostile, hostile_environment, "big"))
        except BaseException as error:  # reported by the test thread
            failures.append(error)

    lister = threading.Thread(target=list_repeatedly, name="lister")
    with bystander(chaos_server, other, other_environment) as report:
        lister.start()
        lister.join(EXPERIMENT_TIMEOUT_SECONDS)

    assert failures == []
    assert report.failures == []
    assert report.calls >= MIN_BYSTANDER_CALLS
    expected = [f"big/e{i:06d}" for i in range(entries)]
    assert listings == [expected] * 3
    assert chaos_server.healthy()
