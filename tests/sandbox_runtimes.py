"""The isolation runtime the sandbox tests run under.

Every test marked ``isolation`` (it starts real sandboxes) runs once per
runtime installed here: bubblewrap always, gVisor when ``runsc`` is (see
tests/conftest.py). The helpers that build settings and specs for those
tests (tests/sandbox/sandbox_support.py) ask :func:`current` which one.
``SANDBOX_SDK_TEST_RUNTIMES`` (e.g. ``gvisor``) narrows the set, for a quick
loop on one runtime.
"""

from __future__ import annotations

import os
import shutil

from sandbox_sdk.models.environment import IsolationRuntime

_current = IsolationRuntime.BUBBLEWRAP


def installed() -> list[IsolationRuntime]:
    """The runtimes to run each isolation test under."""
    runtimes = [IsolationRuntime.BUBBLEWRAP]
    if shutil.which("runsc") is not None:
        runtimes.append(IsolationRuntime.GVISOR)
    wanted = os.environ.get("SANDBOX_SDK_TEST_RUNTIMES", "")
    if wanted:
        names = {name.strip().upper() for name in wanted.split(",")}
        runtimes = [runtime for runtime in runtimes if runtime.value in names]
    return runtimes


def current() -> IsolationRuntime:
    """The runtime of the test running now."""
    return _current


def use(runtime: IsolationRuntime) -> None:
    """Makes ``runtime`` the one the running test's sandboxes get."""
    global _current
    _current = runtime
