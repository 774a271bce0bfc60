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
from leak_checks import environment_dirs, leaks

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
