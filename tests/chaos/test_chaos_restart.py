"""kill -9 of `sandbox-sdk serve` under load, then a restart in place: what was acknowledged
survives, and the server comes back healthy.

While a client keeps creating environments and an experiment runs, the server
is killed with SIGKILL at a random moment and started again on the same port
and data directory. Afterwards:

- every environment whose create was answered before the kill still has its
  record (ended ORCHESTRATOR_RESTARTED: environments never outlive their
  orchestrator), and every create answered after the restart is RUNNING;
- the experiment that had finished keeps its results and events unchanged;
- API keys made before the kill still work;
- the sandboxed command of the killed server is gone, and the new server
  serves: health, create, exec.

No process of the test's servers is left when it ends. Bounds are failure
conditions far above the expected times, not timing assertions.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from chaos_support import processes_with, wait_until
from e2e_support import RECONNECTING, ServerProcess
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandbox_sdk import (
    EnvironmentInfo,
    EnvironmentState,
    ExperimentState,
    SandboxClient,
    SandboxError,
    TerminationReason,
)

WORDS = " ".join(f"word{i}" for i in range(60))
SLOW_MODEL = {"name": "slow", "provider": "scripted", "options": {"chunk_delay_seconds": 0.05}}
CONFIG = {
    "gateway": {"shutdown_grace_seconds": 0.5},
    "orchestrator": {"experiments": {"models": [SLOW_MODEL]}},
}
SMALL = {"disk": "4Mi", "cpu": 0.1, "memory": "64Mi"}
SLEEP_MARKER = "271.75"  # a `sleep` argument no other process on the machine uses
BOUND_SECONDS = 60.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    started = ServerProcess(tmp_path / "data", CONFIG)
    started.start()
    try:
        yield started
    finally:
        started.stop()
    wait_until(
        lambda: not processes_with(str(started.data_dir)),
        BOUND_SECONDS,
        f"the processes of the server in {started.data_dir} to end",
    )


@dataclass
class _Load:
    """Creates environments in a loop until stopped; remembers each answer and when it came."""

    client: SandboxClient
    answers: list[tuple[float, EnvironmentInfo]] = field(default_factory=list)
    errors: list[SandboxError] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            try:
                info = self.client.create_environment(labels={"load": str(number)}, **SMALL).info
            except SandboxError as error:
                self.errors.append(error)
            else:
                self.answers.append((time.monotonic(), info))
            number += 1

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(BOUND_SECONDS * 2)
        assert not self._thread.is_alive(), "a create never ended"


def _healthy(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def _kill_and_restart(server: ServerProcess, after: Callable[[], bool]) -> tuple[float, float]:
    """SIGKILLs the server once ``after()`` holds, then starts it again; returns both times."""
    wait_until(after, BOUND_SECONDS, "load before the kill")
    time.sleep(random.Random(7).uniform(0.0, 0.5))  # a random point in the load
    killed_at = time.monotonic()
    assert server.kill() == -signal.SIGKILL
    server.start()
    return killed_at, time.monotonic()


def test_kill_9_under_load_keeps_what_was_acknowledged(server: ServerProcess) -> None:
    key = server.tenant_key("restarted")
    with server.client(api_key=key, retry=RECONNECTING) as client:
        before = [client.create_environment(labels={"before": str(n)}, **SMALL) for n in range(3)]
        finished = before[0].run_experiment(model="slow", prompts=["one two three", "four five"])
        results = finished.get_results(timeout=BOUND_SECONDS)
        events = list(finished.events(follow=False))
        other_key = server.tenant_key("other-tenant")
        command = before[1].exec_stream(["sh", "-c", f"echo started; exec sleep {SLEEP_MARKER}"])
        assert next(iter(command)).text == "started\n"
        running = before[2].run_experiment(model="slow", prompt=WORDS)

        load = _Load(client)
        load.start()
        try:
            killed_at, restarted_at = _kill_and_restart(server, lambda: len(load.answers) >= 3)
            wait_until(lambda: len(load.answers) >= 6, BOUND_SECONDS, "creates after the restart")
        finally:
            load.stop()

        assert _healthy(server.target)
        for sandbox in before:
            info = client.get_environment(sandbox.id).info
            assert info.labels == sandbox.info.labels
            assert info.state is EnvironmentState.TERMINATED
            assert info.termination_reason is TerminationReason.ORCHESTRATOR_RESTARTED
        acknowledged = [info for at, info in load.answers if at < killed_at]
        assert acknowledged, "no create was answered before the kill"
        for info in acknowledged:
            assert client.get_environment(info.id).info.labels == info.labels
        after_restart = [info for at, info in load.answers if at > restarted_at]
        assert after_restart, "no create was answered after the restart"
        dead = [info.id for info in after_restart if not info.is_running]

        again = client.get_experiment(finished.id)
        assert again.info.state is ExperimentState.SUCCEEDED
        assert again.get_results(timeout=BOUND_SECONDS) == results
        assert list(again.events(follow=False)) == events
        assert client.get_experiment(running.id).wait(BOUND_SECONDS).state.is_final

        with server.client(api_key=other_key) as other:
            assert list(other.list_environments()) == []
        with pytest.raises(SandboxError):
            list(command)  # the command died with the server; ExecCommand is never retried
        wait_until(
            lambda: not processes_with(SLEEP_MARKER),
            BOUND_SECONDS,
            "the killed server's sandboxed command to end",
        )
        with client.create_environment(**SMALL) as fresh:
            assert fresh.exec(["echo", "alive"]).stdout == "alive\n"
        for sandbox in client.list_environments():
            sandbox.delete()

    # A create in flight at the kill, retried with its request_id after the restart,
    # starts afresh: never the environment the restart ended.
    assert not dead, dead
