"""Restarting `sandbox-sdk serve` under a client that is following an experiment.

What the orchestrator promises for an experiment RUNNING when it goes away
(sandbox_sdk/server/orchestrator/experiments/engine.py): one that produced
output is FAILED with reason ORCHESTRATOR_RESTARTED, keeping finished samples;
one that produced none is re-queued. Environments never outlive the
orchestrator (TERMINATED, ORCHESTRATOR_RESTARTED), so a re-queued experiment
then ends FAILED because its environment is gone. In every case the SDK's
``events(follow=True)`` iterator rides through the restart and yields every
event exactly once, in order, up to the final state; events seen before the
restart are stored unchanged.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_support import RECONNECTING, ServerProcess

from sandbox_sdk import (
    EnvironmentState,
    ExperimentEvent,
    ExperimentState,
    LogLevel,
    LogLine,
    OutputDelta,
    SandboxClient,
    SandboxError,
    StateChange,
    TerminationReason,
)

pytestmark = pytest.mark.slow

WORDS = " ".join(f"word{i}" for i in range(80))
SLOW_MODEL = {"name": "slow", "provider": "scripted", "options": {"chunk_delay_seconds": 0.05}}
# Never answers in time: the experiment is RUNNING without any output.
STALLED_MODEL = {
    "name": "stalled",
    "provider": "scripted",
    "options": {"faults": [{"kind": "latency", "seconds": 600, "calls": 1000}]},
}
LOCAL_MODEL = {"name": "smollm2", "provider": "local", "aliases": ["local"], "options": {}}
SERVER_CONFIG = {
    "gateway": {"shutdown_grace_seconds": 0.5},
    "orchestrator": {"experiments": {"models": [SLOW_MODEL, STALLED_MODEL, LOCAL_MODEL]}},
}
SLEEP_MARKER = "317.25"  # a `sleep` argument no other process on the machine uses


class Restarter:
    """Stops the server with a signal and starts it again, in a thread, when triggered.

    The test thread keeps iterating its event stream meanwhile, so the SDK sees the
    connection break and reconnects by itself.
    """

    def __init__(self, server: ServerProcess, signum: int) -> None:
        self.server = server
        self.signum = signum
        self.exit_status: int | None = None
        self.error: BaseException | None = None
        self._trigger = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-restarter", daemon=True)
        self._thread.start()

    def trigger(self) -> None:
        self._trigger.set()

    @property
    def triggered(self) -> bool:
        return self._trigger.is_set()

    def _run(self) -> None:
        if not self._trigger.wait(120):
            return
        try:
            self.exit_status = self.server.stop(self.signum)
            self.server.start()
        except BaseException as error:  # reported by join()
            self.error = error

    def join(self) -> None:
        self._trigger.set()
        self._thread.join(180)
        if self.error is not None:
            raise self.error


def _assert_exactly_once_in_order(received: list[ExperimentEvent]) -> None:
    assert [event.sequence for event in received] == list(range(1, len(received) + 1))
    *before, last = received
    assert isinstance(last.payload, StateChange)
    assert last.payload.state.is_final
    assert not any(
        isinstance(event.payload, StateChange) and event.payload.state.is_final for event in before
    ), "a final state change that was not the last event"


def _states(events: list[ExperimentEvent]) -> list[ExperimentState]:
    return [e.payload.state for e in events if isinstance(e.payload, StateChange)]


def _restart_mid_stream(
    server: ServerProcess,
    signum: int,
    model: str,
    restart_when: Callable[[list[ExperimentEvent]], bool],
) -> tuple[SandboxClient, str, str, list[ExperimentEvent], int]:
    """Runs ``model`` on WORDS, follows its events and restarts the server with
    ``signum`` once ``restart_when(received)`` holds.

    Returns the client, the environment and experiment ids, every event received,
    and how many had been received when the restart was triggered.
    """
    client = server.client(retry=RECONNECTING)
    sandbox = client.create_environment()
    experiment = sandbox.run_experiment(model=model, prompt=WORDS)
    restarter = Restarter(server, signum)
    received: list[ExperimentEvent] = []
    seen_before_restart = 0
    try:
        with experiment.events(follow=True, timeout=120) as stream:
            for event in stream:
                received.append(event)
                if not restarter.triggered and restart_when(received):
                    seen_before_restart = len(received)
                    restarter.trigger()
    finally:
        restarter.join()
    assert seen_before_restart, "the server was never restarted"
    assert restarter.exit_status == (0 if signum == signal.SIGTERM else -signal.SIGKILL)
    return client, sandbox.id, experiment.id, received, seen_before_restart


def _has_output(received: list[ExperimentEvent]) -> bool:
    return sum(isinstance(e.payload, OutputDelta) for e in received) >= 3


def _is_running(received: list[ExperimentEvent]) -> bool:
    return ExperimentState.RUNNING in _states(received)


SIGNALS = [
    pytest.param(signal.SIGTERM, id="SIGTERM"),
    pytest.param(signal.SIGKILL, id="SIGKILL"),
]


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_restart_after_output_fails_the_experiment_and_the_stream_resumes(
    server_process: Callable[..., ServerProcess], signum: int
) -> None:
    server = server_process(SERVER_CONFIG)
    client, environment_id, experiment_id, received, before = _restart_mid_stream(
        server, signum, "slow", _has_output
    )
    with client:
        _assert_exactly_once_in_order(received)
        final = received[-1].payload
        assert isinstance(final, StateChange)
        assert final.state is ExperimentState.FAILED
        assert final.failure is not None
        assert final.failure.reason == "ORCHESTRATOR_RESTARTED"
        # The final event was written after the old gateway had stopped serving the
        # stream, so the iterator must have reconnected to the new server to get it.
        assert len(received) > before
        streamed = "".join(e.payload.text for e in received if isinstance(e.payload, OutputDelta))
        assert streamed
        assert WORDS.startswith(streamed)

        # The events are stored: a fresh read after the restart gives the same ones.
        experiment = client.get_experiment(experiment_id)
        assert list(experiment.events(follow=False)) == received
        assert experiment.info.state is ExperimentState.FAILED
        assert experiment.info.last_sequence == len(received)
        environment = client.get_environment(environment_id).info
        assert environment.state is EnvironmentState.TERMINATED
        assert environment.termination_reason is TerminationReason.ORCHESTRATOR_RESTARTED


@pytest.mark.parametrize(
    "signum",
    [
        pytest.param(signal.SIGTERM, id="SIGTERM"),
        pytest.param(signal.SIGKILL, id="SIGKILL"),
    ],
)
def test_a_restart_before_output_requeues_then_fails_for_the_lost_environment(
    server_process: Callable[..., ServerProcess], signum: int
) -> None:
    server = server_process(SERVER_CONFIG)
    client, _, experiment_id, received, before = _restart_mid_stream(
        server, signum, "stalled", _is_running
    )
    with client:
        _assert_exactly_once_in_order(received)
        assert not any(isinstance(e.payload, OutputDelta) for e in received)
        after_trigger = received[before:]
        requeue_logs = [
            e.payload
            for e in after_trigger
            if isinstance(e.payload, LogLine) and "re-queued" in e.payload.message
        ]
        assert [line.level for line in requeue_logs] == [LogLevel.WARNING]
        states = _states(received)
        assert states[:2] == [ExperimentState.QUEUED, ExperimentState.RUNNING]
        assert ExperimentState.QUEUED in states[2:], "the experiment was not re-queued"
        final = received[-1].payload
        assert isinstance(final, StateChange)
        # Not CANCELLED: nobody cancelled it. It failed because its environment died
        # with the orchestrator, and the failure says so.
        assert final.state is ExperimentState.FAILED
        assert final.failure is not None
        assert "ORCHESTRATOR_RESTARTED" in f"{final.failure.reason} {final.failure.message}"
        assert list(client.get_experiment(experiment_id).events(follow=False)) == received


def _processes_with_argument(argument: str) -> list[int]:
    """Pids of live processes with ``argument`` on their command line."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argument.encode() in argv:
            found.append(int(proc.name))
    return found


def _eventually(condition: Callable[[], bool], seconds: float = 15.0) -> bool:
    """Polls ``condition`` (cleanup after a kill is asynchronous); no timing is asserted."""
    ends_at = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > ends_at:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.model
def test_kill_9_during_a_real_run_keeps_every_streamed_event_and_finished_sample(
    server_process: Callable[..., ServerProcess],
) -> None:
    server = server_process(SERVER_CONFIG)
    admin_key = server.admin_key
    survivor_key = server.tenant_key("survivor")
    client = server.client(retry=RECONNECTING)
    with client:
        sandbox = client.create_environment()
        command = sandbox.exec_stream(["sh", "-c", f"echo started; exec sleep {SLEEP_MARKER}"])
        assert next(iter(command)).text == "started\n"
        assert _eventually(lambda: bool(_processes_with_argument(SLEEP_MARKER))), (
            "the sandboxed command is not running"
        )

        experiment = sandbox.run_experiment(
            model="local",
            prompts=["What is the capital of France?", "Count from one to twenty.", "Say hi."],
            parameters={"temperature": 0, "max_tokens": 48},
        )
        restarter = Restarter(server, signal.SIGKILL)
        received: list[ExperimentEvent] = []
        seen_before_kill: list[ExperimentEvent] = []
        try:
            with experiment.events(follow=True, timeout=120) as stream:
                for event in stream:
                    received.append(event)
                    payload = event.payload
                    if (
                        not restarter.triggered
                        and isinstance(payload, OutputDelta)
                        and payload.input_index == 1
                    ):
                        seen_before_kill = list(received)
                        restarter.trigger()
        finally:
            restarter.join()
        assert restarter.exit_status == -signal.SIGKILL

        _assert_exactly_once_in_order(received)
        stored = list(client.get_experiment(experiment.id).events(follow=False))
        assert stored == received
        assert stored[: len(seen_before_kill)] == seen_before_kill
        final = received[-1].payload
        assert isinstance(final, StateChange)
        assert final.state is ExperimentState.FAILED
        assert final.failure is not None
        assert final.failure.reason == "ORCHESTRATOR_RESTARTED"

        # The sample finished before the kill is kept, as streamed.
        results = experiment.get_results(raise_on_failure=False)
        assert results.experiment.state is ExperimentState.FAILED
        first_output = "".join(
            e.payload.text
            for e in received
            if isinstance(e.payload, OutputDelta) and e.payload.input_index == 0
        )
        assert [(s.input_index, s.output) for s in results.samples][:1] == [(0, first_output)]
        assert first_output.strip()

        # The command in flight died with the server; ExecCommand is never retried.
        with pytest.raises(SandboxError):
            list(command)
        assert _eventually(lambda: not _processes_with_argument(SLEEP_MARKER)), (
            "the sandboxed command outlived the killed orchestrator"
        )
        environment = sandbox.refresh()
        assert environment.state is EnvironmentState.TERMINATED
        assert environment.termination_reason is TerminationReason.ORCHESTRATOR_RESTARTED
        workspaces = server.data_dir / "orchestrator" / "workspaces"
        assert not [p for p in workspaces.iterdir() if sandbox.id in p.name]

        # The restarted server works, with the API keys it had.
        with client.create_environment() as fresh:
            assert fresh.exec(["echo", "alive"]).stdout == "alive\n"
        assert server.admin_key == admin_key
        with server.client(api_key=survivor_key) as survivor:
            assert list(survivor.list_environments()) == []


async def test_the_async_event_iterator_rides_through_a_kill_9(
    server_process: Callable[..., ServerProcess],
) -> None:
    server = server_process(SERVER_CONFIG)
    restarter = Restarter(server, signal.SIGKILL)
    async with server.async_client(retry=RECONNECTING) as client:
        sandbox = await client.create_environment()
        experiment = await sandbox.run_experiment(model="slow", prompt=WORDS)
        received: list[ExperimentEvent] = []
        try:
            async with experiment.events(follow=True, timeout=120) as stream:
                async for event in stream:
                    received.append(event)
                    if not restarter.triggered and _has_output(received):
                        restarter.trigger()
        finally:
            await asyncio.to_thread(restarter.join)
        assert restarter.exit_status == -signal.SIGKILL

        _assert_exactly_once_in_order(received)
        final = received[-1].payload
        assert isinstance(final, StateChange)
        assert final.state is ExperimentState.FAILED
        assert final.failure is not None
        assert final.failure.reason == "ORCHESTRATOR_RESTARTED"
        async with experiment.events(follow=False) as stored:
            assert [event async for event in stored] == received
