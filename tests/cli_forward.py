"""`sandbox-sdk env forward` run as a child process, the way a user runs it, for the CLI
tests against the fake gateway (tests/sdk) and against the real server (tests/e2e)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

SANDBOX_SDK = str(Path(sys.executable).parent / "sandbox-sdk")


@contextmanager
def env_forward(
    env: Mapping[str, str], environment_id: str, port: int
) -> Iterator[subprocess.Popen[str]]:
    """`sandbox-sdk env forward ENVIRONMENT_ID PORT` with ``env``, its output piped (text);
    killed afterwards if the test has not ended it."""
    forward = subprocess.Popen(
        [SANDBOX_SDK, "env", "forward", environment_id, str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield forward
    finally:
        if forward.poll() is None:
            forward.kill()
            forward.wait()
