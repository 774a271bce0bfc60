"""The eval runs in progress in this process, one per sandbox config.

inspect calls ``task_init("startup", config)`` once per config before any sample, in the
task's directory (so a relative config file resolves there), and ``task_cleanup("shutdown",
config, ...)`` after the last. A run keeps the config resolved at startup and a token that
labels its environments, so the cleanup deletes exactly what the run's samples left
behind. Concurrent evals with the same config in one process share the run; the last
cleanup ends it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pydantic import BaseModel

from sandbox_sdk.integrations.inspect_ai.config import SandboxSdkConfig


@dataclass
class Run:
    """A config resolved at startup, the label value of its environments, and its users."""

    config: SandboxSdkConfig
    token: str
    users: int = 0


_runs: dict[str, Run] = {}


def config_key(config: BaseModel | str | None) -> str:
    """The identity inspect gives a config: its file name, or its model's JSON."""
    if isinstance(config, BaseModel):
        return config.model_dump_json()
    return config or ""


def begin(key: str, config: SandboxSdkConfig) -> Run:
    """The run of ``key``, started now if none is in progress."""
    run = _runs.setdefault(key, Run(config=config, token=uuid.uuid4().hex[:16]))
    run.users += 1
    return run


def current(key: str) -> Run | None:
    """The run of ``key`` in progress, if any."""
    return _runs.get(key)


def end(key: str) -> Run | None:
    """The run of ``key`` if this was its last user (clean it up), else None."""
    run = _runs.get(key)
    if run is None:
        return None
    run.users -= 1
    if run.users > 0:
        return None
    del _runs[key]
    return run
