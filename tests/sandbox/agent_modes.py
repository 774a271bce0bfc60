"""The two ways an environment's agent can be run, for tests that must pass under both.

``two-way`` is the bubblewrap default: the agent sends pidfds, terminals and
connected sockets back. ``one-way`` is what gVisor needs (the agent sends no
fd, its socket is its stdin): running it under bubblewrap too proves the mode
without gVisor. A test takes the ``agent_mode`` fixture (or a module makes it
autouse); for ``one-way`` every agent the orchestrator starts meanwhile is
launched in that mode, the launch otherwise as the orchestrator made it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import sandbox_runtimes

from sandbox_sdk.models.environment import IsolationRuntime
from sandbox_sdk.server.orchestrator.sandbox.agent_client import AgentClient, AgentLaunch

AGENT_MODES = ["two-way", "one-way"]


def one_way(launch: AgentLaunch) -> AgentLaunch:
    """``launch`` in the one-way mode, with the agent's socket on its stdin."""
    return dataclasses.replace(launch, fds_from_agent=False, socket_on_stdin=True)


def launch_agents_one_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until the test ends, every agent is started in the one-way mode."""
    start = AgentClient.start.__func__  # type: ignore[attr-defined]

    async def start_one_way(cls: type[AgentClient], launch: AgentLaunch, **kwargs: Any) -> Any:
        return await start(cls, one_way(launch), **kwargs)

    monkeypatch.setattr(AgentClient, "start", classmethod(start_one_way))


@pytest.fixture(params=AGENT_MODES)
def agent_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The agent's mode for this test: ``two-way`` or ``one-way``."""
    mode: str = request.param
    if mode == "two-way" and sandbox_runtimes.current() is IsolationRuntime.GVISOR:
        pytest.skip("gVisor's agent always runs one-way: the one-way variant is this one")
    if mode == "one-way":
        launch_agents_one_way(monkeypatch)
    return mode
