"""The Node.js client (client.js, loading proto/ directly) against the real embedded server.

The server is started the way ``sandbox-sdk serve`` starts it (serve_embedded in
its own process), so this also checks the ready line, the admin key file and a
graceful stop on SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
READY = re.compile(r"sandbox-sdk serving on 127\.0\.0\.1:(\d+) \(data dir (.+)\)")


@pytest.fixture
def embedded_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``serve_embedded`` on a free port in a child process; SIGTERM at the end."""
    data_dir = tmp_path / "data"
    code = (
        "import sys; from sandbox_sdk.server.embedded import serve_embedded;"
        " serve_embedded('127.0.0.1', 0, sys.argv[1])"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = READY.search(line)
        if match is None:
            process.kill()
            _, errors = process.communicate(timeout=30)
            pytest.fail(f"the server did not start: {line!r}\n{errors[-4000:]}")
        assert Path(match.group(2)) == data_dir
        yield int(match.group(1)), data_dir
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, process.stderr.read() if process.stderr else ""


def test_node_client_runs_an_experiment_through_the_gateway(
    node: str, embedded_server: tuple[int, Path]
) -> None:
    port, data_dir = embedded_server
    key_file = data_dir / "admin.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert "\n" not in key

    completed = subprocess.run(
        [node, str(HERE / "client.js"), f"127.0.0.1:{port}", key],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)

    assert result["unauthenticated_code"] == 16  # UNAUTHENTICATED
    assert result["unauthenticated_has_details"] is True
    assert "scripted" in result["models"]
    assert result["environment_id"].startswith("env-o1-")
    assert result["environment_state"] == "ENVIRONMENT_STATE_RUNNING"
    assert result["experiment_id"].startswith("exp-o1-")
    sequences = result["event_sequences"]
    assert sequences == list(range(1, len(sequences) + 1))
    assert "output" in result["event_kinds"]
    assert result["states"][-1] == "EXPERIMENT_STATE_SUCCEEDED"
    assert result["final_state"] == "EXPERIMENT_STATE_SUCCEEDED"
    assert result["deleted_state"] == "ENVIRONMENT_STATE_TERMINATED"
    assert key not in completed.stdout + completed.stderr
