"""Another tenant's GetEnvironment p99 under each hostile load, divided by its p99 at idle.

The server runs as ``sandbox-sdk serve`` does (gateway and orchestrator in one
child process); this process is the clients. A bystander tenant calls
GetEnvironment one call at a time, first with the server idle, then while a
hostile tenant runs one load:

* ``experiment``: a 10,000-input experiment on the fast scripted model with an
  exact-match scorer, until it ends;
* ``regex``: an experiment whose regex scorer is the catastrophic ``^(a+)+$``
  on outputs like ``"a" * n + "!"``, until it ends;
* ``listing``: listing a directory of 300,000 entries, whole, three times.

The ratio of the two p99s is the row; the goal is at most 3x. Idle and loaded
samples are taken back to back, so both see the same machine.
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from bench_common import serve_in_child

from sandbox_sdk.api.v1 import experiment_pb2, gateway_service_pb2_grpc, requests_pb2

IDLE_CALLS = 1000
GOAL_RATIO = 3.0
LOAD_TIMEOUT_SECONDS = 300.0
LISTED_ENTRIES = 300_000
EXPERIMENT_INPUTS = 10_000


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


class _Tenant:
    """A tenant's key and a stub of the gateway."""

    def __init__(self, target: str, admin_key: str, name: str) -> None:
        from sandbox_sdk import SandboxClient

        with SandboxClient(target, api_key=admin_key) as admin:
            key = admin.create_api_key(tenant=name, scopes=("read", "write")).secret
        self.metadata = (("authorization", f"Bearer {key}"),)
        self.channel = grpc.insecure_channel(target)
        self.stub = gateway_service_pb2_grpc.GatewayServiceStub(self.channel)

    def call(self, method: str, request: Any, timeout: float = 60.0) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=timeout)

    def environment(self) -> str:
        request = requests_pb2.CreateEnvironmentRequest()
        return str(self.call("CreateEnvironment", request).environment.id)


def _bystander_calls(
    tenant: _Tenant, environment_id: str, until: Callable[[], bool]
) -> list[float]:
    request = requests_pb2.GetEnvironmentRequest(environment_id=environment_id)
    samples: list[float] = []
    while not until():
        started = time.perf_counter()
        tenant.call("GetEnvironment", request, timeout=30.0)
        samples.append(time.perf_counter() - started)
    return samples


def _run_experiment(
    tenant: _Tenant, environment_id: str, spec: experiment_pb2.ExperimentSpec
) -> None:
    request = requests_pb2.CreateExperimentRequest(environment_id=environment_id, spec=spec)
    experiment_id = tenant.call("CreateExperiment", request).experiment.id
    get = requests_pb2.GetExperimentRequest(experiment_id=experiment_id)
    running = (experiment_pb2.EXPERIMENT_STATE_QUEUED, experiment_pb2.EXPERIMENT_STATE_RUNNING)
    while tenant.call("GetExperiment", get).experiment.state in running:
        time.sleep(0.1)


def _experiment_load(tenant: _Tenant, environment_id: str) -> Callable[[], None]:
    spec = experiment_pb2.ExperimentSpec(model="scripted")
    for index in range(EXPERIMENT_INPUTS):
        spec.inputs.add(prompt=f"short prompt number {index}", expected="x")
    spec.scorers.add().exact_match.SetInParent()
    return lambda: _run_experiment(tenant, environment_id, spec)


def _regex_load(tenant: _Tenant, environment_id: str) -> Callable[[], None]:
    spec = experiment_pb2.ExperimentSpec(model="scripted", repeats=20)
    for length in (28, 40, 64, 1_000, 5_000, 20_000, 90_000):
        spec.inputs.add(prompt="a" * length + "!")
    spec.parameters.max_tokens = 4000
    spec.scorers.add(name="evil").regex.pattern = "^(a+)+$"
    spec.scorers.add(name="nested").regex.pattern = "^((a|aa)*)*b$"
    return lambda: _run_experiment(tenant, environment_id, spec)


def _listing_load(tenant: _Tenant, environment_id: str) -> Callable[[], None]:
    script = (
        "import os\n"
        "os.mkdir('big')\n"
        f"for i in range({LISTED_ENTRIES}):\n"
        "    name = f'big/e{i:06d}'\n"
        "    if i % 50000 == 0:\n"
        "        first = name\n"
        "        open(first, 'w').close()\n"
        "    else:\n"
        "        os.link(first, name)\n"
    )
    request = requests_pb2.ExecCommandRequest(
        environment_id=environment_id, argv=["python3", "-c", script]
    )
    request.timeout.FromSeconds(300)
    for _ in tenant.stub.ExecCommand(request, metadata=tenant.metadata, timeout=360):
        pass

    def list_three_times() -> None:
        for _ in range(3):
            token, listed = "", 0
            while True:
                page = requests_pb2.ListFilesRequest(
                    environment_id=environment_id, path="big", page_size=1000, page_token=token
                )
                try:
                    response = tenant.call("ListFiles", page)
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    time.sleep(0.2)
                    continue
                listed += len(response.files)
                token = response.next_page_token
                if not token:
                    break
            if listed != LISTED_ENTRIES:
                raise RuntimeError(f"listed {listed} of {LISTED_ENTRIES} entries")

    return list_three_times


LOADS: dict[str, tuple[str, Callable[[_Tenant, str], Callable[[], None]]]] = {
    "experiment": (f"a {EXPERIMENT_INPUTS:,}-input scripted experiment", _experiment_load),
    "regex": ("a ^(a+)+$ regex scorer experiment", _regex_load),
    "listing": (f"ListFiles of {LISTED_ENTRIES:,} entries, 3x", _listing_load),
}


def _measure(target: str, admin_key: str, load: str) -> tuple[float, float, float]:
    """(idle p99, loaded p99, load seconds) for one load, with fresh tenants."""
    suffix = f"{load}-{int(time.time() * 1000) % 100_000}"
    hostile, other = (
        _Tenant(target, admin_key, f"hostile-{suffix}"),
        _Tenant(target, admin_key, f"bystander-{suffix}"),
    )
    hostile_environment, other_environment = hostile.environment(), other.environment()
    start_load = LOADS[load][1](hostile, hostile_environment)
    count = iter(range(IDLE_CALLS + 1))
    idle = _bystander_calls(other, other_environment, lambda: next(count) >= IDLE_CALLS)
    failures: list[BaseException] = []

    def run_load() -> None:
        try:
            start_load()
        except BaseException as error:  # reported below
            failures.append(error)

    thread = threading.Thread(target=run_load, name=f"load-{load}")
    started = time.perf_counter()
    thread.start()
    deadline = started + LOAD_TIMEOUT_SECONDS
    loaded = _bystander_calls(
        other, other_environment, lambda: not thread.is_alive() or time.perf_counter() > deadline
    )
    thread.join()
    elapsed = time.perf_counter() - started
    for tenant, environment_id in ((hostile, hostile_environment), (other, other_environment)):
        tenant.call(
            "DeleteEnvironment",
            requests_pb2.DeleteEnvironmentRequest(environment_id=environment_id),
        )
        tenant.channel.close()
    if failures:
        raise failures[0]
    return _p99(idle), _p99(loaded), elapsed


def run(loads: list[str] | None = None) -> list[dict[str, object]]:
    """One row per hostile load: the bystander's p99 under it over its idle p99."""
    context = multiprocessing.get_context("spawn")
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as directory:
        parent, child = context.Pipe()
        server = context.Process(target=serve_in_child, args=(directory, child), daemon=True)
        server.start()
        endpoint = parent.recv()
        try:
            for load in loads or list(LOADS):
                idle, loaded, seconds = _measure(endpoint["gateway"], endpoint["admin_key"], load)
                rows.append(
                    {
                        "benchmark": "hostile load",
                        "metric": f"bystander GetEnvironment p99 during {LOADS[load][0]}"
                        f" ({seconds:.1f} s)",
                        "value": loaded * 1000,
                        "baseline": idle * 1000,
                        "ratio": loaded / idle,
                        "unit": "ms",
                        "goal": f"<= {GOAL_RATIO:g}x the idle p99",
                    }
                )
        finally:
            parent.close()
            server.join(120)  # it terminates its environments before it exits
    return rows


if __name__ == "__main__":
    for row in run(sys.argv[1:] or None):
        print(
            f"{row['metric']:<70} {row['value']:>8.2f} ms  idle {row['baseline']:>7.2f} ms"
            f"  ratio {row['ratio']:.2f}  goal {row['goal']}"
        )
