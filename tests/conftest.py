"""Checks that hold for the whole test session: nothing a test started outlives it.

After every other session fixture has stopped its servers, no child process of
this pytest process may be left (a sandbox agent, bubblewrap, slirp4netns, a
`sandbox-sdk serve`), nothing may stay mounted under the session's temporary
directory, no loop device may still be backed by a file there (a
workspace image), and no environment cgroup or mount point the session
created may remain. A leak fails the run.

Under pytest-xdist (``make test`` runs two workers, ``--dist loadfile``) each
worker's orchestrators keep their environments under parents of the worker's
own (tests/worker_places.py), so the workers neither sweep nor count each
other's; the modules that share a host directory no lock guards run in the
same worker (:data:`_SAME_WORKER`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import ctrl_c_raises  # noqa: F401
import grpc_fork_handlers_off  # noqa: F401 (before grpc is imported)
import pytest
import sandbox_runtimes
import worker_places
from leak_checks import environment_dirs, leaks

from sandbox_sdk.models.environment import IsolationRuntime

_GRACE_SECONDS = 15.0

# Test files that must run in one worker, one after the other: both build in and delete
# from the template cache shared by test runs ($SANDBOX_SDK_TEMPLATE_CACHE), whose start
# sweeps away unfinished builds (another process's in progress too).
_SAME_WORKER = {
    "tests/sandbox/test_sandbox_templates.py": "template-cache",
    "tests/e2e/test_e2e_templates.py": "template-cache",
}

# Test files of few but long tests (seconds, measured in two workers), sent to the workers
# first: xdist sends files of many tests first, and one of these left for last keeps one
# worker busy alone at the end.
_LONG_FIRST = (
    "tests/e2e/test_e2e_restart.py",  # 83
    "tests/e2e/test_e2e_product_example.py",  # 81
    "tests/cluster/test_cluster_processes.py",  # 71
    "tests/contract/test_contract_packaging.py",  # 50
    "tests/chaos/test_chaos_proxy.py",  # 47
    "tests/e2e/test_e2e_local_model.py",  # 36
    "tests/chaos/test_chaos_retry_storm.py",  # 34
    "tests/chaos/test_chaos_restart.py",  # 32
    "tests/chaos/test_chaos_hostile_load.py",  # 31
    "tests/integrations/test_inspect_ai_eval.py",  # 31
)


def pytest_configure(config: pytest.Config) -> None:
    """Before any test module is collected, so before anything makes settings."""
    worker_places.use_the_workers_own()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # A worker starts with COLUMNS=80, which a run in one process has not: the CLI's
        # rich consoles, made at import, would keep that width whatever a test sets.
        os.environ.pop("COLUMNS", None)


@pytest.fixture(scope="session", autouse=True)
def _nothing_outlives_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    base = tmp_path_factory.getbasetemp().resolve()
    before = environment_dirs()
    yield
    deadline = time.monotonic() + _GRACE_SECONDS
    while (found := leaks(base, before)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not found, "the tests left these behind:\n" + "\n".join(found)
    worker_places.remove_the_workers_own()


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


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile``, but the files of :data:`_SAME_WORKER` go to one worker and
    those of :data:`_LONG_FIRST` go first."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesSharingAHostDirectory(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return _SAME_WORKER.get(path, path)

        def _assign_work_unit(self, node: Any) -> None:
            for path in reversed(_LONG_FIRST):  # no-op once they are sent
                if path in self.workqueue:
                    self.workqueue.move_to_end(path, last=False)
            super()._assign_work_unit(node)

    return FilesSharingAHostDirectory(config, log)
