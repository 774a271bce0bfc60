"""The real server behind a proxy that cuts and blackholes connections.

- Event streams cut at random moments still deliver every event exactly once.
- Creates cut at random moments, retried with the same request_id, make one
  RUNNING environment each: no duplicate, never a dead one.
- On a blackholed connection (bytes dropped, nothing closed) a call with a
  timeout ends with it; calls without one (exec, events) end with UNAVAILABLE
  once keepalive gives the connection up, and the event stream then resumes on
  a new connection with nothing lost or duplicated. The same holds between the
  gateway and an orchestrator.

Bounds such as ``BLACKHOLE_BOUND_SECONDS`` are failure conditions far above the
expected times (keepalive needs about 15 s), not timing assertions.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chaos_proxy import ChaosProxy
from chaos_support import own_stack, processes_with, wait_until
from e2e_support import BackgroundLoop, EmbeddedStack, unique_tenant

from sandbox_sdk import (
    ExperimentEvent,
    ExperimentState,
    RetryPolicy,
    SandboxClient,
    SandboxTimeoutError,
    StateChange,
    UnavailableError,
)
from sandbox_sdk.server.gateway.api_keys import Scope
from sandbox_sdk.server.gateway.config import GatewayConfig
from sandbox_sdk.server.gateway.server import GatewayServer
from sandbox_sdk.server.orchestrator.app import OrchestratorApp
from sandbox_sdk.server.orchestrator.config import OrchestratorConfig

WORDS = " ".join(f"word{i}" for i in range(80))
# Echoes the prompt a word every 50 ms: about 4 s and 85 events per prompt.
SLOW_MODEL = {"name": "slow", "provider": "scripted", "options": {"chunk_delay_seconds": 0.05}}
CONFIG: dict[str, Any] = {"orchestrator": {"experiments": {"models": [SLOW_MODEL]}}}
# Keepalive gives a dead connection up after about 15 s (10 s ping interval, 5 s timeout).
BLACKHOLE_BOUND_SECONDS = 40.0
STREAM_BOUND_SECONDS = 120.0
CREATES = 12
# Reconnects quickly and often: the proxy keeps cutting.
PATIENT = RetryPolicy(max_attempts=40, initial_backoff=0.05, max_backoff=0.5, deadline=120.0)
SMALL = {"disk": "4Mi", "cpu": 0.1, "memory": "64Mi"}
SLEEP = ["sleep", "293.25"]  # an argument no other process on the machine uses


def _no_sleep_left() -> None:
    """Fails if a command this module started outlived its environment."""
    wait_until(
        lambda: not processes_with(SLEEP[1]),
        BLACKHOLE_BOUND_SECONDS,
        "the sandboxed commands to end with their environments",
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    with own_stack(tmp_path_factory.mktemp("proxy") / "data", CONFIG) as started:
        yield started
    _no_sleep_left()


@pytest.fixture
def proxy(stack: EmbeddedStack) -> Iterator[ChaosProxy]:
    with ChaosProxy(stack.target) as started:
        yield started


@pytest.fixture
def key(stack: EmbeddedStack) -> str:
    return stack.tenant_key(unique_tenant("proxy"))


def _assert_exactly_once(received: list[ExperimentEvent], stored: list[ExperimentEvent]) -> None:
    assert [event.sequence for event in received] == list(range(1, len(received) + 1))
    assert received == stored
    final = received[-1].payload
    assert isinstance(final, StateChange)
    assert final.state is ExperimentState.SUCCEEDED


def test_event_streams_cut_at_random_deliver_every_event_exactly_once(
    stack: EmbeddedStack, proxy: ChaosProxy, key: str
) -> None:
    with (
        stack.client(api_key=key) as direct,
        SandboxClient(proxy.target, api_key=key, retry=PATIENT) as through_proxy,
        direct.create_environment(**SMALL) as sandbox,
    ):
        experiment = sandbox.run_experiment(model="slow", prompts=[WORDS, WORDS])
        followed = through_proxy.get_experiment(experiment.id)
        with (
            proxy.cut_randomly(0.3, 0.8, seed=1),
            followed.events(timeout=STREAM_BOUND_SECONDS) as stream,
        ):
            received = list(stream)
        stored = list(direct.get_experiment(experiment.id).events(follow=False))
    _assert_exactly_once(received, stored)
    assert proxy.cuts >= 3, "the stream was never cut; the test proved nothing"


def test_creates_cut_at_random_make_one_running_environment_each(
    stack: EmbeddedStack, proxy: ChaosProxy, key: str
) -> None:
    with (
        stack.client(api_key=key) as direct,
        SandboxClient(proxy.target, api_key=key, retry=PATIENT) as through_proxy,
    ):
        created = []
        with proxy.cut_randomly(0.05, 0.4, seed=2):
            for number in range(CREATES):
                sandbox = through_proxy.create_environment(labels={"n": str(number)}, **SMALL)
                created.append(sandbox.info)
        listed = [sandbox.info for sandbox in direct.list_environments()]
        for info in listed:
            direct.get_environment(info.id).delete()
    assert proxy.cuts >= 3, "the creates were never cut; the test proved nothing"
    # Each create answered with a running environment...
    assert [info.is_running for info in created] == [True] * CREATES
    # ...and made exactly one: retries with its request_id found the first.
    assert sorted(int(info.labels["n"]) for info in listed) == list(range(CREATES))
    assert {info.id for info in listed} == {info.id for info in created}
    assert all(info.is_running for info in listed)


@dataclass
class _Outcome:
    """What a call run in a thread ended with."""

    result: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def _in_thread(call: Callable[[], Any]) -> _Outcome:
    outcome = _Outcome()

    def run() -> None:
        try:
            outcome.result = call()
        except BaseException as error:  # reported by the test
            outcome.error = error
        finally:
            outcome.done.set()

    threading.Thread(target=run, name="chaos-call", daemon=True).start()
    return outcome


def _finished(outcome: _Outcome, what: str) -> _Outcome:
    assert outcome.done.wait(BLACKHOLE_BOUND_SECONDS), (
        f"{what} was still blocked {BLACKHOLE_BOUND_SECONDS:g}s after the connection went dead"
    )
    return outcome


def test_on_a_blackholed_connection_calls_end_and_event_streams_resume(
    stack: EmbeddedStack, proxy: ChaosProxy, key: str
) -> None:
    with (
        stack.client(api_key=key) as direct,
        SandboxClient(proxy.target, api_key=key) as through_proxy,
        direct.create_environment(**SMALL) as sandbox,
    ):
        experiment = sandbox.run_experiment(model="slow", prompt=WORDS)
        followed = through_proxy.get_experiment(experiment.id)
        remote = through_proxy.get_environment(sandbox.id)
        first_events = threading.Semaphore(0)
        received: list[ExperimentEvent] = []

        def follow() -> None:
            for event in followed.events():  # no timeout
                received.append(event)
                first_events.release()

        following = _in_thread(follow)
        command = _in_thread(lambda: remote.exec(SLEEP))  # no timeout
        for _ in range(3):
            assert first_events.acquire(timeout=STREAM_BOUND_SECONDS), "no events arrived"
        assert proxy.stall() >= 1

        # A call with a timeout keeps it on the dead connection.
        with pytest.raises(SandboxTimeoutError):
            through_proxy.get_environment(sandbox.id, timeout=2.0)

        exec_error = _finished(command, "exec() without a timeout").error
        assert isinstance(exec_error, UnavailableError), exec_error
        assert "is not retried" in str(exec_error)
        assert _finished(following, "events() without a timeout").error is None
        stored = list(direct.get_experiment(experiment.id).events(follow=False))
    _assert_exactly_once(received, stored)
    # The stream went on over a new connection, opened after the stall.
    assert proxy.connections >= 2


@dataclass
class _SplitStack:
    """A gateway that reaches its orchestrator through a proxy, in this process."""

    gateway: GatewayServer
    orchestrator: OrchestratorApp
    link: ChaosProxy
    background: BackgroundLoop

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    def key(self, tenant: str) -> str:
        return self.gateway.keys.create(tenant, (Scope.READ, Scope.WRITE)).secret


@pytest.fixture
def split_stack(tmp_path: Path) -> Iterator[_SplitStack]:
    background = BackgroundLoop()
    token = secrets.token_urlsafe(32)
    orchestrator = background.run(
        OrchestratorApp.start(
            OrchestratorConfig(
                orchestrator_id="o1", data_dir=tmp_path / "orchestrator", internal_token=token
            ),
            "127.0.0.1:0",
        ),
        60,
    )
    link = ChaosProxy(orchestrator.address).start()
    config = GatewayConfig(
        listen="127.0.0.1:0",
        orchestrators=[{"id": "o1", "address": link.target}],  # type: ignore[list-item]
        internal_token=token,
        db_path=tmp_path / "gateway.db",
    )
    gateway = background.run(GatewayServer.start(config), 60)
    try:
        yield _SplitStack(gateway, orchestrator, link, background)
    finally:
        background.run(gateway.stop(0), 60)
        link.stop()
        background.run(orchestrator.stop(0), 60)
        background.close()
    _no_sleep_left()


def test_a_blackholed_link_to_the_orchestrator_ends_calls_without_a_timeout(
    split_stack: _SplitStack,
) -> None:
    with (
        SandboxClient(split_stack.target, api_key=split_stack.key("linked")) as client,
        client.create_environment(**SMALL) as sandbox,
    ):
        command = _in_thread(lambda: sandbox.exec(SLEEP))  # no timeout
        assert not command.done.wait(1.0), command.error
        assert split_stack.link.stall() >= 1
        exec_error = _finished(command, "a forwarded exec() without a timeout").error
        assert isinstance(exec_error, UnavailableError), exec_error
        # The gateway reconnects over a new link connection; calls work again.
        assert client.get_environment(sandbox.id, retry=PATIENT).info.is_running
