"""Checks that hold for the whole test session: nothing a test started outlives it.

After every other session fixture has stopped its servers, no child process of
this pytest process may be left (a sandbox agent, bubblewrap, slirp4netns, a
`sandbox-sdk serve`), nothing may stay mounted under the session's temporary
directory, no loop device may still be backed by a file there (a
workspace image), and no environment cgroup or mount point the session
created may remain. A leak fails the run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sandbox_runtimes
from leak_checks import environment_dirs, leaks

from sandbox_sdk.models.environment import IsolationRuntime

_GRACE_SECONDS = 15.0


@pytest.fixture(scope="session", autouse=True)
def _nothing_outlives_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    base = tmp_path_factory.getbasetemp().resolve()
    before = environment_dirs()
    yield
    deadline = time.monotonic() + _GRACE_SECONDS
    while (found := leaks(base, before)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not found, "the tests left these behind:\n" + "\n".join(found)


@pytest.fixture(autouse=True)
def sandbox_runtime(request: pytest.FixtureRequest) -> Iterator[IsolationRuntime]:
    """The isolation runtime this test's sandboxes get (see tests/sandbox_runtimes.py)."""
    runtime = getattr(request, "param", IsolationRuntime.BUBBLEWRAP)
    only = request.node.get_closest_marker("bubblewrap_only")
    if only is not None and runtime is not IsolationRuntime.BUBBLEWRAP:
        pytest.skip(f"bubblewrap only: {only.kwargs['reason']}")
    sandbox_runtimes.use(runtime)
    try:
        yield runtime
    finally:
        sandbox_runtimes.use(IsolationRuntime.BUBBLEWRAP)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Runs every test that starts real sandboxes under each installed runtime."""
    if metafunc.definition.get_closest_marker("isolation") is None:
        return
    runtimes = sandbox_runtimes.installed()
    metafunc.parametrize(
        "sandbox_runtime",
        runtimes,
        indirect=True,
        ids=[runtime.value.lower() for runtime in runtimes],
    )
