"""What several benchmarks share: a server in a child process, and a row of ratios."""

from __future__ import annotations

import asyncio
from multiprocessing.connection import Connection
from typing import Any


def serve_in_child(
    data_dir: str, conn: Connection, in_process: bool = True, config_path: str | None = None
) -> None:
    """Child process: runs the embedded server as ``sandbox-sdk serve`` does (start-up
    objects frozen out of the garbage collector), with the config file ``config_path`` if
    given, sends its endpoints on ``conn``, and stops when the parent closes its end."""
    from sandbox_sdk.server.embedded import run_embedded
    from sandbox_sdk.server.garbage import freeze_startup_objects

    async def main() -> None:
        server = await run_embedded("127.0.0.1", 0, data_dir, config_path, in_process=in_process)
        freeze_startup_objects()
        conn.send(
            {
                "gateway": f"127.0.0.1:{server.port}",
                "orchestrator": server.orchestrator.address,
                "internal_token": server.orchestrator.config.internal_token,
                "admin_key": server.admin_key_path.read_text().strip(),
            }
        )
        try:
            # Returns (or raises EOFError) when the parent closes its end.
            await asyncio.get_running_loop().run_in_executor(None, conn.recv_bytes)
        except EOFError:
            pass
        finally:
            await server.stop(1.0)

    asyncio.run(main())


def ratio_row(
    benchmark: str, metric: str, seconds: float, baseline_seconds: float, goal: str
) -> dict[str, Any]:
    """A table row of a time and its baseline from the same run, in milliseconds."""
    return {
        "benchmark": benchmark,
        "metric": metric,
        "value": seconds * 1000,
        "baseline": baseline_seconds * 1000,
        "ratio": seconds / baseline_seconds,
        "unit": "ms",
        "goal": goal,
    }
