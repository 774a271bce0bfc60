"""One sync-style interface over the sync and the async client, so behavioural
scenarios are written once and run against both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from sandbox_sdk import AsyncSandboxClient, SandboxClient
from sandbox_sdk.models import (
    ApiKeyInfo,
    CreatedApiKey,
    EnvironmentInfo,
    ExecResult,
    ExperimentEvent,
    ExperimentInfo,
    FileInfo,
)
from sandbox_sdk.models.results import ExperimentResults

T = TypeVar("T")


class SyncDriver:
    kind = "sync"

    def __init__(self, target: str, **options: Any) -> None:
        self.client = SandboxClient(target, **options)

    def get_environment(self, environment_id: str, **kw: Any) -> EnvironmentInfo:
        return self.client.get_environment(environment_id, **kw).info

    def create_environment(self, **kw: Any) -> EnvironmentInfo:
        return self.client.create_environment(**kw).info

    def update_environment(self, environment_id: str, **kw: Any) -> EnvironmentInfo:
        return self.client.get_environment(environment_id).update(**kw)

    def delete_environment(self, environment_id: str, **kw: Any) -> EnvironmentInfo:
        return self.client.get_environment(environment_id).delete(**kw)

    def write_file(self, environment_id: str, path: str, content: bytes, **kw: Any) -> FileInfo:
        return self.client.get_environment(environment_id).write_file(path, content, **kw)

    def list_environment_ids(self, **kw: Any) -> list[str]:
        return [sandbox.id for sandbox in self.client.list_environments(**kw)]

    def exec(self, environment_id: str, cmd: Any, **kw: Any) -> ExecResult:
        return self.client.get_environment(environment_id).exec(cmd, **kw)

    def run_experiment(self, environment_id: str, **kw: Any) -> ExperimentInfo:
        return self.client.get_environment(environment_id).run_experiment(**kw).info

    def events(self, experiment_id: str, **kw: Any) -> list[ExperimentEvent]:
        with self.client.get_experiment(experiment_id).events(**kw) as stream:
            return list(stream)

    def cancel_experiment(self, experiment_id: str, **kw: Any) -> ExperimentInfo:
        return self.client.get_experiment(experiment_id).cancel(**kw)

    def create_api_key(self, **kw: Any) -> CreatedApiKey:
        return self.client.create_api_key(**kw)

    def revoke_api_key(self, api_key_id: str, **kw: Any) -> ApiKeyInfo:
        return self.client.revoke_api_key(api_key_id, **kw)

    def results(self, experiment_id: str, **kw: Any) -> ExperimentResults:
        return self.client.get_experiment(experiment_id).get_results(**kw)

    def close(self) -> None:
        self.client.close()


async def _collect(items: AsyncIterator[T]) -> list[T]:
    return [item async for item in items]


class AsyncDriver:
    kind = "async"

    def __init__(self, target: str, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.client: AsyncSandboxClient = self.run(self._open(target, options))

    @staticmethod
    async def _open(target: str, options: dict[str, Any]) -> AsyncSandboxClient:
        return AsyncSandboxClient(target, **options)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def get_environment(self, environment_id: str, **kw: Any) -> EnvironmentInfo:
        return self.run(self.client.get_environment(environment_id, **kw)).info

    def create_environment(self, **kw: Any) -> EnvironmentInfo:
        return self.run(self.client.create_environment(**kw)).info

    def update_environment(self, environment_id: str, **kw: Any) -> EnvironmentInfo:
        sandbox = self.run(self.client.get_environment(environment_id))
        return self.run(sandbox.update(**kw))

    def delete_environment(self, environment_id: str, **kw: Any) -> EnvironmentInfo:
        sandbox = self.run(self.client.get_environment(environment_id))
        return self.run(sandbox.delete(**kw))

    def write_file(self, environment_id: str, path: str, content: bytes, **kw: Any) -> FileInfo:
        sandbox = self.run(self.client.get_environment(environment_id))
        return self.run(sandbox.write_file(path, content, **kw))

    def list_environment_ids(self, **kw: Any) -> list[str]:
        return [s.id for s in self.run(_collect(self.client.list_environments(**kw)))]

    def exec(self, environment_id: str, cmd: Any, **kw: Any) -> ExecResult:
        sandbox = self.run(self.client.get_environment(environment_id))
        return self.run(sandbox.exec(cmd, **kw))

    def run_experiment(self, environment_id: str, **kw: Any) -> ExperimentInfo:
        sandbox = self.run(self.client.get_environment(environment_id))
        return self.run(sandbox.run_experiment(**kw)).info

    def events(self, experiment_id: str, **kw: Any) -> list[ExperimentEvent]:
        experiment = self.run(self.client.get_experiment(experiment_id))
        return self.run(_collect(experiment.events(**kw)))

    def cancel_experiment(self, experiment_id: str, **kw: Any) -> ExperimentInfo:
        experiment = self.run(self.client.get_experiment(experiment_id))
        return self.run(experiment.cancel(**kw))

    def create_api_key(self, **kw: Any) -> CreatedApiKey:
        return self.run(self.client.create_api_key(**kw))

    def revoke_api_key(self, api_key_id: str, **kw: Any) -> ApiKeyInfo:
        return self.run(self.client.revoke_api_key(api_key_id, **kw))

    def results(self, experiment_id: str, **kw: Any) -> ExperimentResults:
        experiment = self.run(self.client.get_experiment(experiment_id))
        return self.run(experiment.get_results(**kw))

    def close(self) -> None:
        self.run(self.client.close())
        self.loop.close()


Driver = SyncDriver | AsyncDriver
DRIVERS = {"sync": SyncDriver, "async": AsyncDriver}
