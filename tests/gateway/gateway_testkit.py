"""Test kit for the gateway: a fake orchestrator, and readers of rich error statuses.

The fake orchestrator is a real grpc.aio OrchestratorService server on
127.0.0.1 that keeps environments and experiments in memory. It is a test
double at the gateway's edge (the real orchestrator is tested by its owners).
It enforces tenancy like the real one (others' ids are NOT_FOUND), answers
errors as rich statuses through ErrorInterceptor, records the calls it
received, and can be told to fail the next calls of a method or to hold a
call open until the test releases it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from sandbox_sdk.api.v1 import (
    common_pb2,
    environment_pb2,
    experiment_pb2,
    orchestrator_service_pb2,
    orchestrator_service_pb2_grpc,
    requests_pb2,
)
from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server import ids
from sandbox_sdk.server.ops import add_health_and_reflection
from sandbox_sdk.server.status import ErrorInterceptor, ServiceError, not_found
from sandbox_sdk.server.tenancy import tenant_of

Context = grpc.aio.ServicerContext[Any, Any]
RUNNING = environment_pb2.ENVIRONMENT_STATE_RUNNING
SUCCEEDED = experiment_pb2.EXPERIMENT_STATE_SUCCEEDED
TERMINATED = environment_pb2.ENVIRONMENT_STATE_TERMINATED


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


@dataclass
class FakeState:
    """What the fake orchestrator knows; it survives a stop and restart."""

    orchestrator_id: str
    max_environments: int = 100
    environments: dict[str, tuple[str, environment_pb2.Environment]] = field(default_factory=dict)
    experiments: dict[str, tuple[str, experiment_pb2.Experiment]] = field(default_factory=dict)
    events: dict[str, list[experiment_pb2.ExperimentEvent]] = field(default_factory=dict)
    files: dict[str, dict[str, bytes]] = field(default_factory=lambda: defaultdict(dict))
    created_by_request: dict[tuple[str, str], str] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    # Codes the next calls of a method fail with, front first.
    failures: dict[str, list[grpc.StatusCode]] = field(default_factory=lambda: defaultdict(list))
    # Methods whose calls wait for `release` before answering.
    hold: set[str] = field(default_factory=set)
    # Streaming methods that wait for `release` after their first message.
    hold_after_first: set[str] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: Counter[str] = field(default_factory=Counter)

    def environment_count(self) -> int:
        return sum(1 for _, env in self.environments.values() if env.state == RUNNING)


class FakeOrchestratorServicer(orchestrator_service_pb2_grpc.OrchestratorServiceServicer):
    """In-memory OrchestratorService."""

    def __init__(self, state: FakeState, internal_token: str | None) -> None:
        self.state = state
        self._token = internal_token

    async def _enter(self, method: str, context: Context) -> str:
        state = self.state
        state.calls[method] += 1
        seen = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        state.metadata[method] = seen
        if self._token and seen.get("authorization") != f"Bearer {self._token}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "internal token required")
        if state.failures[method]:
            await context.abort(state.failures[method].pop(0), f"injected failure of {method}")
        if method in state.hold:
            try:
                await state.release.wait()
            except asyncio.CancelledError:
                state.cancelled[method] += 1
                raise
        return tenant_of(context)

    async def _pause(self, method: str) -> None:
        if method in self.state.hold_after_first:
            try:
                await self.state.release.wait()
            except asyncio.CancelledError:
                self.state.cancelled[method] += 1
                raise

    def _environment(self, tenant: str, environment_id: str) -> environment_pb2.Environment:
        owned = self.state.environments.get(environment_id)
        if owned is None or owned[0] != tenant:
            raise not_found(ErrorReason.ENVIRONMENT_NOT_FOUND, f"no environment {environment_id}")
        return owned[1]

    def _experiment(self, tenant: str, experiment_id: str) -> experiment_pb2.Experiment:
        owned = self.state.experiments.get(experiment_id)
        if owned is None or owned[0] != tenant:
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND,
                ErrorReason.EXPERIMENT_NOT_FOUND,
                f"no experiment {experiment_id}",
                metadata={"orchestrator_id": self.state.orchestrator_id},
            )
        return owned[1]

    async def CreateEnvironment(
        self, request: requests_pb2.CreateEnvironmentRequest, context: Context
    ) -> requests_pb2.CreateEnvironmentResponse:
        tenant = await self._enter("CreateEnvironment", context)
        if request.request_id and (tenant, request.request_id) in self.state.created_by_request:
            env_id = self.state.created_by_request[(tenant, request.request_id)]
            return requests_pb2.CreateEnvironmentResponse(
                environment=self.state.environments[env_id][1]
            )
        if request.spec.limits.memory_bytes < 0:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                ErrorReason.INVALID_ARGUMENT,
                "spec.limits.memory_bytes: must not be negative",
                field_violations=[("spec.limits.memory_bytes", "must not be negative")],
            )
        env = environment_pb2.Environment(
            id=ids.new_id(ids.ENVIRONMENT, self.state.orchestrator_id),
            spec=request.spec,
            state=RUNNING,
            isolation="fake",
            orchestrator_id=self.state.orchestrator_id,
            create_time=_now(),
        )
        self.state.environments[env.id] = (tenant, env)
        if request.request_id:
            self.state.created_by_request[(tenant, request.request_id)] = env.id
        return requests_pb2.CreateEnvironmentResponse(environment=env)

    async def GetEnvironment(
        self, request: requests_pb2.GetEnvironmentRequest, context: Context
    ) -> requests_pb2.GetEnvironmentResponse:
        tenant = await self._enter("GetEnvironment", context)
        return requests_pb2.GetEnvironmentResponse(
            environment=self._environment(tenant, request.environment_id)
        )

    async def ListEnvironments(
        self, request: requests_pb2.ListEnvironmentsRequest, context: Context
    ) -> requests_pb2.ListEnvironmentsResponse:
        tenant = await self._enter("ListEnvironments", context)
        envs = [
            env
            for owner, env in self.state.environments.values()
            if owner == tenant
            and (request.show_terminated or env.state != TERMINATED)
            and all(env.spec.labels.get(k) == v for k, v in request.label_selector.items())
        ]
        envs.sort(key=lambda e: (e.create_time.seconds, e.create_time.nanos, e.id), reverse=True)
        page, token = _paginate(envs, request.page_size, request.page_token)
        return requests_pb2.ListEnvironmentsResponse(environments=page, next_page_token=token)

    async def UpdateEnvironment(
        self, request: requests_pb2.UpdateEnvironmentRequest, context: Context
    ) -> requests_pb2.UpdateEnvironmentResponse:
        tenant = await self._enter("UpdateEnvironment", context)
        env = self._environment(tenant, request.environment_id)
        if "labels" in request.update_mask.paths:
            env.spec.labels.clear()
            env.spec.labels.update(request.spec.labels)
        return requests_pb2.UpdateEnvironmentResponse(environment=env)

    async def DeleteEnvironment(
        self, request: requests_pb2.DeleteEnvironmentRequest, context: Context
    ) -> requests_pb2.DeleteEnvironmentResponse:
        tenant = await self._enter("DeleteEnvironment", context)
        env = self._environment(tenant, request.environment_id)
        env.state = TERMINATED
        env.termination_reason = environment_pb2.TERMINATION_REASON_USER_DELETED
        return requests_pb2.DeleteEnvironmentResponse(environment=env)

    async def ExecCommand(
        self, request: requests_pb2.ExecCommandRequest, context: Context
    ) -> AsyncIterator[requests_pb2.ExecCommandResponse]:
        tenant = await self._enter("ExecCommand", context)
        self._environment(tenant, request.environment_id)
        yield requests_pb2.ExecCommandResponse(started=environment_pb2.ExecStarted(pid=42))
        await self._pause("ExecCommand")
        yield requests_pb2.ExecCommandResponse(stdout=" ".join(request.argv).encode() + b"\n")
        yield requests_pb2.ExecCommandResponse(
            exited=environment_pb2.ExecExited(
                exit_code=0, reason=environment_pb2.EXIT_REASON_EXITED
            )
        )

    async def WriteFile(
        self, request: requests_pb2.WriteFileRequest, context: Context
    ) -> requests_pb2.WriteFileResponse:
        tenant = await self._enter("WriteFile", context)
        self._environment(tenant, request.environment_id)
        self.state.files[request.environment_id][request.file.path] = request.file.content
        return requests_pb2.WriteFileResponse(
            file=environment_pb2.FileInfo(
                path=request.file.path, size_bytes=len(request.file.content)
            )
        )

    async def ReadFile(
        self, request: requests_pb2.ReadFileRequest, context: Context
    ) -> requests_pb2.ReadFileResponse:
        tenant = await self._enter("ReadFile", context)
        self._environment(tenant, request.environment_id)
        content = self.state.files[request.environment_id].get(request.path)
        if content is None:
            raise not_found(ErrorReason.FILE_NOT_FOUND, f"no file {request.path}")
        return requests_pb2.ReadFileResponse(
            file=environment_pb2.FileInfo(path=request.path, size_bytes=len(content)),
            content=content,
        )

    async def ListFiles(
        self, request: requests_pb2.ListFilesRequest, context: Context
    ) -> requests_pb2.ListFilesResponse:
        tenant = await self._enter("ListFiles", context)
        self._environment(tenant, request.environment_id)
        return requests_pb2.ListFilesResponse(
            files=[
                environment_pb2.FileInfo(path=path, size_bytes=len(content))
                for path, content in sorted(self.state.files[request.environment_id].items())
            ]
        )

    async def GetEnvironmentUsage(
        self, request: requests_pb2.GetEnvironmentUsageRequest, context: Context
    ) -> requests_pb2.GetEnvironmentUsageResponse:
        tenant = await self._enter("GetEnvironmentUsage", context)
        env = self._environment(tenant, request.environment_id)
        return requests_pb2.GetEnvironmentUsageResponse(
            usage=common_pb2.ResourceUsage(pids=1, sample_time=_now()), limits=env.spec.limits
        )

    async def StreamEnvironmentUsage(
        self, request: requests_pb2.StreamEnvironmentUsageRequest, context: Context
    ) -> AsyncIterator[requests_pb2.StreamEnvironmentUsageResponse]:
        tenant = await self._enter("StreamEnvironmentUsage", context)
        self._environment(tenant, request.environment_id)
        for pids in (1, 2, 3):
            yield requests_pb2.StreamEnvironmentUsageResponse(
                usage=common_pb2.ResourceUsage(pids=pids, sample_time=_now())
            )
            await self._pause("StreamEnvironmentUsage")

    async def CreateExperiment(
        self, request: requests_pb2.CreateExperimentRequest, context: Context
    ) -> requests_pb2.CreateExperimentResponse:
        tenant = await self._enter("CreateExperiment", context)
        self._environment(tenant, request.environment_id)
        if request.spec.model != "scripted":
            raise not_found(ErrorReason.MODEL_NOT_FOUND, f"no model {request.spec.model!r}")
        experiment = experiment_pb2.Experiment(
            id=ids.new_id(ids.EXPERIMENT, self.state.orchestrator_id),
            environment_id=request.environment_id,
            spec=request.spec,
            state=experiment_pb2.EXPERIMENT_STATE_QUEUED,
            total_samples=len(request.spec.inputs),
            create_time=_now(),
        )
        self.state.experiments[experiment.id] = (tenant, experiment)
        self.state.events[experiment.id] = _scripted_events(experiment)
        experiment.last_sequence = len(self.state.events[experiment.id])
        return requests_pb2.CreateExperimentResponse(experiment=experiment)

    async def GetExperiment(
        self, request: requests_pb2.GetExperimentRequest, context: Context
    ) -> requests_pb2.GetExperimentResponse:
        tenant = await self._enter("GetExperiment", context)
        return requests_pb2.GetExperimentResponse(
            experiment=self._experiment(tenant, request.experiment_id)
        )

    async def ListExperiments(
        self, request: requests_pb2.ListExperimentsRequest, context: Context
    ) -> requests_pb2.ListExperimentsResponse:
        tenant = await self._enter("ListExperiments", context)
        found = [
            exp
            for owner, exp in self.state.experiments.values()
            if owner == tenant
            and (not request.states or exp.state in request.states)
            and (not request.environment_id or exp.environment_id == request.environment_id)
        ]
        found.sort(key=lambda e: (e.create_time.seconds, e.create_time.nanos, e.id), reverse=True)
        page, token = _paginate(found, request.page_size, request.page_token)
        return requests_pb2.ListExperimentsResponse(experiments=page, next_page_token=token)

    async def CancelExperiment(
        self, request: requests_pb2.CancelExperimentRequest, context: Context
    ) -> requests_pb2.CancelExperimentResponse:
        tenant = await self._enter("CancelExperiment", context)
        experiment = self._experiment(tenant, request.experiment_id)
        if experiment.state in (
            experiment_pb2.EXPERIMENT_STATE_QUEUED,
            experiment_pb2.EXPERIMENT_STATE_RUNNING,
        ):
            experiment.state = experiment_pb2.EXPERIMENT_STATE_CANCELLED
        return requests_pb2.CancelExperimentResponse(experiment=experiment)

    async def GetExperimentResults(
        self, request: requests_pb2.GetExperimentResultsRequest, context: Context
    ) -> requests_pb2.GetExperimentResultsResponse:
        tenant = await self._enter("GetExperimentResults", context)
        experiment = self._experiment(tenant, request.experiment_id)
        return requests_pb2.GetExperimentResultsResponse(
            experiment=experiment,
            samples=[
                experiment_pb2.SampleResult(input_index=i, prompt=inp.prompt, output=inp.prompt)
                for i, inp in enumerate(experiment.spec.inputs)
            ],
        )

    async def StreamExperimentEvents(
        self, request: requests_pb2.StreamExperimentEventsRequest, context: Context
    ) -> AsyncIterator[requests_pb2.StreamExperimentEventsResponse]:
        tenant = await self._enter("StreamExperimentEvents", context)
        experiment = self._experiment(tenant, request.experiment_id)
        for event in self.state.events[experiment.id]:
            if event.sequence > request.after_sequence:
                yield requests_pb2.StreamExperimentEventsResponse(event=event)
        experiment.state = experiment_pb2.EXPERIMENT_STATE_SUCCEEDED
        experiment.completed_samples = experiment.total_samples

    async def ListModels(
        self, request: requests_pb2.ListModelsRequest, context: Context
    ) -> requests_pb2.ListModelsResponse:
        await self._enter("ListModels", context)
        return requests_pb2.ListModelsResponse(
            models=[experiment_pb2.Model(name="scripted", provider="scripted")]
        )

    async def GetCapacity(
        self, request: orchestrator_service_pb2.GetCapacityRequest, context: Context
    ) -> orchestrator_service_pb2.GetCapacityResponse:
        await self._enter("GetCapacity", context)
        return orchestrator_service_pb2.GetCapacityResponse(
            orchestrator_id=self.state.orchestrator_id,
            environments_running=self.state.environment_count(),
            environments_max=self.state.max_environments,
            memory_bytes_total=1 << 34,
            cpu_cores_total=2.0,
            isolation="fake",
        )

    async def GetTenantUsage(
        self, request: orchestrator_service_pb2.GetTenantUsageRequest, context: Context
    ) -> orchestrator_service_pb2.GetTenantUsageResponse:
        tenant = await self._enter("GetTenantUsage", context)
        environments = [env for owner, env in self.state.environments.values() if owner == tenant]
        states = Counter(
            exp.state for owner, exp in self.state.experiments.values() if owner == tenant
        )
        return orchestrator_service_pb2.GetTenantUsageResponse(
            environments_live=sum(1 for env in environments if env.state != TERMINATED),
            experiments_queued=states[experiment_pb2.EXPERIMENT_STATE_QUEUED],
            experiments_running=states[experiment_pb2.EXPERIMENT_STATE_RUNNING],
        )


def _paginate(items: list[Any], page_size: int, page_token: str) -> tuple[list[Any], str]:
    start = int(page_token or 0)
    size = page_size or 50
    end = start + size
    return items[start:end], str(end) if end < len(items) else ""


def _scripted_events(experiment: experiment_pb2.Experiment) -> list[experiment_pb2.ExperimentEvent]:
    payloads: list[dict[str, Any]] = [
        {"state_change": experiment_pb2.StateChange(state=experiment_pb2.EXPERIMENT_STATE_RUNNING)}
    ]
    for index, item in enumerate(experiment.spec.inputs):
        payloads.append({"output": experiment_pb2.OutputDelta(input_index=index, text=item.prompt)})
        payloads.append(
            {"metric": experiment_pb2.MetricSample(name="latency_seconds", value=0.01, unit="s")}
        )
    payloads.append({"state_change": experiment_pb2.StateChange(state=SUCCEEDED)})
    return [
        experiment_pb2.ExperimentEvent(
            sequence=sequence, time=_now(), experiment_id=experiment.id, **payload
        )
        for sequence, payload in enumerate(payloads, start=1)
    ]


class FakeOrchestrator:
    """A running fake orchestrator on 127.0.0.1."""

    def __init__(self, server: grpc.aio.Server, state: FakeState, port: int) -> None:
        self.server = server
        self.state = state
        self.port = port
        self.address = f"127.0.0.1:{port}"

    @classmethod
    async def start(
        cls, state: FakeState, port: int = 0, internal_token: str | None = None
    ) -> FakeOrchestrator:
        server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        orchestrator_service_pb2_grpc.add_OrchestratorServiceServicer_to_server(
            FakeOrchestratorServicer(state, internal_token), server
        )
        await add_health_and_reflection(server, ["sandbox.v1.OrchestratorService"])
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        return cls(server, state, bound)

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(grace)


# -- reading rich statuses -------------------------------------------------------------


def status_details(error: grpc.aio.AioRpcError) -> list[Any]:
    """The unpacked google.rpc.Status details of a failed call."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            unpacked: list[Any] = []
            for detail in status.details:
                for kind in (
                    error_details_pb2.ErrorInfo,
                    error_details_pb2.BadRequest,
                    error_details_pb2.QuotaFailure,
                    error_details_pb2.RetryInfo,
                    error_details_pb2.RequestInfo,
                ):
                    if detail.Is(kind.DESCRIPTOR):
                        message = kind()
                        detail.Unpack(message)
                        unpacked.append(message)
            return unpacked
    return []


def detail(error: grpc.aio.AioRpcError, kind: type[Any]) -> Any:
    """The one detail of ``kind`` in the error's status; fails the test if there is none."""
    found = [d for d in status_details(error) if isinstance(d, kind)]
    assert found, f"no {kind.__name__} in {error.code()} {error.details()}: {status_details(error)}"
    return found[0]


def reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call."""
    return str(detail(error, error_details_pb2.ErrorInfo).reason)
