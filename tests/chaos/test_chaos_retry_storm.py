"""Storms of refused calls against the real server, with the SDK's default retries.

- A tenant sends 400 calls at 20 per second against a rate limit of 15 per
  second: the gateway tells each refused caller when its token will be there
  (after those refused before it), spread, and the SDK waits at least that,
  jittered, past its attempt count until its deadline; every call gets through.
  Before, every refused caller was told the same next-token delay and came back
  at once: 316 of 400 got through here (110 of 400 at 5 per second); then, with
  the delays spread, 395 of 400, the rest refused five times in a row by new
  calls taking their tokens first.
- A create refused because the orchestrator is full is told to come back in
  about a second, and gets through by itself once a delete frees room; before,
  it was told the next ttl expiry (up to 60 s), longer than the SDK's whole
  retry deadline, so the SDK gave up at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from chaos_support import own_stack
from e2e_support import EmbeddedStack, unique_tenant

from sandbox_sdk import (
    CapacityExhaustedError,
    RetryPolicy,
    SandboxError,
)

STORM_TENANT = "storm"
CALLS = 400
CALLS_PER_SECOND = 20.0
RATE_LIMIT = 15.0
MAX_ENVIRONMENTS = 4
SMALL = {"disk": "4Mi", "cpu": 0.1, "memory": "64Mi"}
CONFIG: dict[str, Any] = {
    "gateway": {
        "limits": {
            "tenants": {STORM_TENANT: {"requests_per_second": RATE_LIMIT, "burst": RATE_LIMIT}}
        }
    },
    "orchestrator": {
        "sandbox": {
            "max_environments": MAX_ENVIRONMENTS,
            "tenant_share_max": 1.0,
            "fair_share_headroom": 0.0,
        }
    },
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    with own_stack(tmp_path_factory.mktemp("storm") / "data", CONFIG) as started:
        yield started


def _storm(call: Callable[[], object]) -> list[BaseException | None]:
    """Starts ``CALLS`` calls at ``CALLS_PER_SECOND``, each in its own thread; their errors."""

    def outcome() -> BaseException | None:
        try:
            call()
        except SandboxError as error:
            return error
        return None

    started = time.monotonic()
    futures: list[Future[BaseException | None]] = []
    with ThreadPoolExecutor(max_workers=CALLS, thread_name_prefix="storm") as pool:
        for number in range(CALLS):
            time.sleep(max(0.0, started + number / CALLS_PER_SECOND - time.monotonic()))
            futures.append(pool.submit(outcome))
        return [future.result() for future in futures]


@pytest.mark.timeout(240)  # each call ends within its 60 s retry deadline
def test_a_rate_limited_storm_with_default_retries_all_get_through(
    stack: EmbeddedStack,
) -> None:
    """The backlog (5 calls a second more than the limit, for 20 s) clears about 7 s after
    the last call starts, well within each call's 60 s retry deadline."""
    with stack.client(api_key=stack.tenant_key(STORM_TENANT)) as client:
        errors = _storm(client.list_models)
    failed = [error for error in errors if error is not None]
    assert not failed, f"{len(failed)} of {CALLS} failed, the first: {failed[0]!r}"


class _Recorder:
    """A RetryPolicy ``sleep`` that records each wait and runs a hook after the first."""

    def __init__(self, after_first: Callable[[], object]) -> None:
        self.waits: list[float] = []
        self._after_first = after_first

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if len(self.waits) == 1:
            threading.Thread(target=self._after_first, daemon=True).start()
        time.sleep(seconds)


def test_a_create_refused_for_capacity_gets_through_once_a_delete_frees_room(
    stack: EmbeddedStack,
) -> None:
    key = stack.tenant_key(unique_tenant("full"))
    with stack.client(api_key=key) as client:
        held = [client.create_environment(**SMALL) for _ in range(MAX_ENVIRONMENTS)]
        with pytest.raises(CapacityExhaustedError) as caught:
            client.create_environment(retry=RetryPolicy.disabled(), **SMALL)
        assert caught.value.retry_after is not None
        assert 1.0 <= caught.value.retry_after <= 1.5
        assert "delete environments" in caught.value.advice

        # The default policy, only watched: a delete as soon as the create was refused.
        waits = _Recorder(after_first=held.pop().delete)
        with stack.client(api_key=key, retry=RetryPolicy(sleep=waits)) as waiting:
            arrived = waiting.create_environment(**SMALL)
            assert arrived.info.is_running
            arrived.delete()
        assert waits.waits, "the create was never refused; the test proved nothing"
        assert all(1.0 <= wait <= 1.5 * 1.5 for wait in waits.waits)
        for sandbox in held:
            sandbox.delete()
