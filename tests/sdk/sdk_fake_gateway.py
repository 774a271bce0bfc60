"""An in-memory GatewayService for the SDK's tests, served by a real gRPC server.

It keeps environments, experiments and API keys in dicts, runs exec commands
as local subprocesses (the real sandboxing is the orchestrator's, tested on its
own), answers with the same rich statuses as the real services, and lets tests
inject failures and push experiment events.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import defaultdict
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from sandbox_sdk.api.v1 import (
    common_pb2,
    environment_pb2,
    experiment_pb2,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    requests_pb2,
)
from sandbox_sdk.errors import ERROR_DOMAIN, ErrorReason


def rich_status(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    *,
    field_violations: Any = (),
    quota_violations: Any = (),
    retry_after: float | None = None,
    request_id: str = "req-fake-1",
) -> grpc.Status:
    """A google.rpc.Status with the details the real services attach."""
    details = [error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)]
    if field_violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in field_violations
                ]
            )
        )
    if quota_violations:
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject=s, description=d)
                    for s, d in quota_violations
                ]
            )
        )
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    details.append(error_details_pb2.RequestInfo(request_id=request_id))
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)
        packed.append(wrapper)
    proto = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)
    return rpc_status.to_status(proto)


class ServiceError(Exception):
    """What a fake handler raises to answer with a rich status."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = rich_status(code, reason, message, **details)


API_KEY = "sk-test-0123456789abcdef"
FINAL = {3, 4, 5, 6}


@dataclass
class Failure:
    """Answer the next ``count`` calls of a method with this status."""

    count: int
    code: grpc.StatusCode
    reason: str = ErrorReason.ORCHESTRATOR_UNAVAILABLE
    message: str = "injected failure"
    retry_after: float | None = None
    field_violations: tuple[tuple[str, str], ...] = ()
    quota_violations: tuple[tuple[str, str], ...] = ()


@dataclass
class Seen:
    """One call as the server saw it."""

    method: str
    request: Any
    metadata: dict[str, str]
    time_remaining: float | None


@dataclass
class ExperimentRecord:
    message: experiment_pb2.Experiment
    events: list[experiment_pb2.ExperimentEvent] = field(default_factory=list)
    samples: list[experiment_pb2.SampleResult] = field(default_factory=list)


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


class FakeGateway(gateway_service_pb2_grpc.GatewayServiceServicer):
    """State and behaviour; survives server restarts (serve it again on the same port)."""

    def __init__(self, *, auto_complete: bool = True) -> None:
        self.auto_complete = auto_complete
        self.keys = {API_KEY}
        self.failures: dict[str, list[Failure]] = defaultdict(list)
        self.seen: list[Seen] = []
        self.environments: dict[str, environment_pb2.Environment] = {}
        self.files: dict[str, dict[str, bytes]] = defaultdict(dict)
        self.experiments: dict[str, ExperimentRecord] = {}
        self.api_keys: dict[str, gateway_service_pb2.ApiKey] = {}
        self.by_request_id: dict[str, Any] = {}
        self.condition = threading.Condition()
        self.break_stream_after: int | None = None
        self.active_streams = 0
        self._counter = 0

    # -- test controls ---------------------------------------------------------------------

    def fail(self, method: str, failure: Failure) -> None:
        self.failures[method].append(failure)

    def calls(self, method: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.method == method]

    def emit(self, experiment_id: str, **payload: Any) -> experiment_pb2.ExperimentEvent:
        with self.condition:
            record = self.experiments[experiment_id]
            event = experiment_pb2.ExperimentEvent(
                sequence=len(record.events) + 1,
                time=_now(),
                experiment_id=experiment_id,
                **payload,
            )
            record.events.append(event)
            record.message.last_sequence = event.sequence
            if "state_change" in payload:
                record.message.state = payload["state_change"].state
                if payload["state_change"].HasField("failure"):
                    record.message.failure.CopyFrom(payload["state_change"].failure)
            self.condition.notify_all()
            return event

    def finish(self, experiment_id: str, state: int = 3, reason: str = "") -> None:
        failure = experiment_pb2.ExperimentFailure(reason=reason, message=f"ended {reason}")
        change = experiment_pb2.StateChange(state=state, failure=failure if reason else None)
        self.emit(experiment_id, state_change=change)

    # -- plumbing --------------------------------------------------------------------------

    def _enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata())
        self.seen.append(Seen(method, request, metadata, context.time_remaining()))
        queue = self.failures.get(method)
        if queue:
            failure = queue[0]
            failure.count -= 1
            if failure.count <= 0:
                queue.pop(0)
            self._abort(
                context,
                ServiceError(
                    failure.code,
                    failure.reason,
                    failure.message,
                    retry_after=failure.retry_after,
                    field_violations=failure.field_violations,
                    quota_violations=failure.quota_violations,
                ),
            )
        token = metadata.get("authorization", "")
        if token.removeprefix("Bearer ") not in self.keys:
            self._abort(
                context,
                ServiceError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    ErrorReason.API_KEY_INVALID,
                    "the API key is not valid; create one with `sandbox-sdk keys create`",
                ),
            )

    @staticmethod
    def _abort(context: grpc.ServicerContext, error: ServiceError) -> None:
        context.abort_with_status(error.status)

    def _next_id(self, kind: str) -> str:
        self._counter += 1
        return f"{kind}-o1-{self._counter:016x}"

    def _environment(self, environment_id: str, context: grpc.ServicerContext) -> Any:
        environment = self.environments.get(environment_id)
        if environment is None:
            self._abort(
                context,
                ServiceError(
                    grpc.StatusCode.NOT_FOUND,
                    ErrorReason.ENVIRONMENT_NOT_FOUND,
                    f"environment {environment_id} not found; list yours with `sandbox-sdk env ls`",
                ),
            )
        return environment

    def _experiment(self, experiment_id: str, context: grpc.ServicerContext) -> ExperimentRecord:
        record = self.experiments.get(experiment_id)
        if record is None:
            self._abort(
                context,
                ServiceError(
                    grpc.StatusCode.NOT_FOUND,
                    ErrorReason.EXPERIMENT_NOT_FOUND,
                    f"experiment {experiment_id} not found",
                ),
            )
        assert record is not None
        return record

    # -- environments ----------------------------------------------------------------------

    def CreateEnvironment(self, request, context):
        self._enter("CreateEnvironment", request, context)
        if request.request_id and request.request_id in self.by_request_id:
            return self.by_request_id[request.request_id]
        if request.spec.limits.memory_bytes and request.spec.limits.memory_bytes < 1024 * 1024:
            self._abort(
                context,
                ServiceError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    ErrorReason.INVALID_ARGUMENT,
                    "spec.limits.memory_bytes: at least 1Mi; raise memory=",
                    field_violations=[("spec.limits.memory_bytes", "at least 1Mi; raise memory=")],
                ),
            )
        environment = environment_pb2.Environment(
            id=self._next_id("env"),
            spec=request.spec,
            state=environment_pb2.ENVIRONMENT_STATE_RUNNING,
            isolation="fake",
            orchestrator_id="o1",
            create_time=_now(),
        )
        self.environments[environment.id] = environment
        for item in request.files:
            self.files[environment.id][item.path] = item.content
        response = requests_pb2.CreateEnvironmentResponse(environment=environment)
        if request.request_id:
            self.by_request_id[request.request_id] = response
        return response

    def GetEnvironment(self, request, context):
        self._enter("GetEnvironment", request, context)
        environment = self._environment(request.environment_id, context)
        return requests_pb2.GetEnvironmentResponse(environment=environment)

    def ListEnvironments(self, request, context):
        self._enter("ListEnvironments", request, context)
        items = [
            env
            for env in self.environments.values()
            if all(env.spec.labels.get(k) == v for k, v in request.label_selector.items())
            and (
                request.show_terminated or env.state != environment_pb2.ENVIRONMENT_STATE_TERMINATED
            )
        ]
        start = int(request.page_token or 0)
        size = request.page_size or 50
        page = items[start : start + size]
        token = str(start + size) if start + size < len(items) else ""
        return requests_pb2.ListEnvironmentsResponse(environments=page, next_page_token=token)

    def UpdateEnvironment(self, request, context):
        self._enter("UpdateEnvironment", request, context)
        environment = self._environment(request.environment_id, context)
        for path in request.update_mask.paths:
            if path == "labels":
                environment.spec.labels.clear()
                environment.spec.labels.update(request.spec.labels)
            elif path == "ttl":
                environment.spec.ttl.CopyFrom(request.spec.ttl)
            elif path == "idle_timeout":
                environment.spec.idle_timeout.CopyFrom(request.spec.idle_timeout)
        return requests_pb2.UpdateEnvironmentResponse(environment=environment)

    def DeleteEnvironment(self, request, context):
        self._enter("DeleteEnvironment", request, context)
        environment = self._environment(request.environment_id, context)
        environment.state = environment_pb2.ENVIRONMENT_STATE_TERMINATED
        environment.termination_reason = environment_pb2.TERMINATION_REASON_USER_DELETED
        return requests_pb2.DeleteEnvironmentResponse(environment=environment)

    def ExecCommand(self, request, context):
        self._enter("ExecCommand", request, context)
        self._environment(request.environment_id, context)
        started = time.monotonic()
        process = subprocess.Popen(
            list(request.argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", **dict(request.env_vars)},
        )
        yield requests_pb2.ExecCommandResponse(started=environment_pb2.ExecStarted(pid=process.pid))
        out, err = process.communicate(request.stdin)
        for line in out.splitlines(keepends=True):
            yield requests_pb2.ExecCommandResponse(stdout=line)
        if err:
            yield requests_pb2.ExecCommandResponse(stderr=err)
        exited = environment_pb2.ExecExited(
            exit_code=process.returncode,
            reason=environment_pb2.EXIT_REASON_EXITED,
            usage=common_pb2.ResourceUsage(cpu_seconds=0.01, memory_peak_bytes=1 << 20),
        )
        exited.duration.FromNanoseconds(int((time.monotonic() - started) * 1e9))
        yield requests_pb2.ExecCommandResponse(exited=exited)

    def WriteFile(self, request, context):
        self._enter("WriteFile", request, context)
        self._environment(request.environment_id, context)
        self.files[request.environment_id][request.file.path] = request.file.content
        info = environment_pb2.FileInfo(
            path=request.file.path,
            size_bytes=len(request.file.content),
            mode=request.file.mode or 0o644,
        )
        return requests_pb2.WriteFileResponse(file=info)

    def ReadFile(self, request, context):
        self._enter("ReadFile", request, context)
        self._environment(request.environment_id, context)
        content = self.files[request.environment_id].get(request.path)
        if content is None:
            self._abort(
                context,
                ServiceError(grpc.StatusCode.NOT_FOUND, ErrorReason.FILE_NOT_FOUND, "no such file"),
            )
        info = environment_pb2.FileInfo(path=request.path, size_bytes=len(content))
        return requests_pb2.ReadFileResponse(file=info, content=content)

    def ListFiles(self, request, context):
        self._enter("ListFiles", request, context)
        self._environment(request.environment_id, context)
        names = sorted(self.files[request.environment_id])
        start = int(request.page_token or 0)
        size = request.page_size or 100
        page = [
            environment_pb2.FileInfo(
                path=name, size_bytes=len(self.files[request.environment_id][name])
            )
            for name in names[start : start + size]
        ]
        token = str(start + size) if start + size < len(names) else ""
        return requests_pb2.ListFilesResponse(files=page, next_page_token=token)

    def GetEnvironmentUsage(self, request, context):
        self._enter("GetEnvironmentUsage", request, context)
        environment = self._environment(request.environment_id, context)
        usage = common_pb2.ResourceUsage(cpu_seconds=1.5, memory_bytes=4096, pids=2)
        return requests_pb2.GetEnvironmentUsageResponse(usage=usage, limits=environment.spec.limits)

    def StreamEnvironmentUsage(self, request, context):
        self._enter("StreamEnvironmentUsage", request, context)
        self._environment(request.environment_id, context)
        for index in range(3):
            usage = common_pb2.ResourceUsage(cpu_seconds=float(index), memory_bytes=1000 * index)
            yield requests_pb2.StreamEnvironmentUsageResponse(usage=usage)

    # -- experiments -----------------------------------------------------------------------

    def CreateExperiment(self, request, context):
        self._enter("CreateExperiment", request, context)
        if request.request_id and request.request_id in self.by_request_id:
            return self.by_request_id[request.request_id]
        self._environment(request.environment_id, context)
        if request.spec.model not in ("gpt-3", "smollm2"):
            self._abort(
                context,
                ServiceError(
                    grpc.StatusCode.NOT_FOUND,
                    ErrorReason.MODEL_NOT_FOUND,
                    f"model {request.spec.model!r} not found; `sandbox-sdk models` lists them",
                ),
            )
        repeats = request.spec.repeats or 1
        message = experiment_pb2.Experiment(
            id=self._next_id("exp"),
            environment_id=request.environment_id,
            spec=request.spec,
            state=experiment_pb2.EXPERIMENT_STATE_QUEUED,
            total_samples=len(request.spec.inputs) * repeats,
            create_time=_now(),
        )
        record = ExperimentRecord(message)
        self.experiments[message.id] = record
        for index, item in enumerate(request.spec.inputs):
            for repeat in range(repeats):
                sample = experiment_pb2.SampleResult(
                    input_index=index,
                    repeat=repeat,
                    prompt=item.prompt,
                    expected=item.expected,
                    output=item.prompt.upper(),
                    scores={"exact_match": float(item.prompt.upper() == item.expected)},
                    usage=experiment_pb2.TokenUsage(prompt_tokens=3, completion_tokens=4 + repeat),
                    tokens_per_second=10.0 + index + repeat,
                    finish_reason="stop",
                )
                sample.latency.FromMilliseconds(100 + 10 * index + repeat)
                record.samples.append(sample)
        self.emit(message.id, state_change=experiment_pb2.StateChange(state=1, queue_position=1))
        if self.auto_complete:
            self.emit(message.id, state_change=experiment_pb2.StateChange(state=2))
            for sample in record.samples:
                self.emit(
                    message.id,
                    output=experiment_pb2.OutputDelta(
                        input_index=sample.input_index, repeat=sample.repeat, text=sample.output
                    ),
                )
                self.emit(
                    message.id,
                    metric=experiment_pb2.MetricSample(
                        name="latency_seconds", value=0.1, unit="s", input_index=sample.input_index
                    ),
                )
            self.emit(message.id, log=experiment_pb2.LogLine(level=2, message="done"))
            self.finish(message.id)
        response = requests_pb2.CreateExperimentResponse(experiment=record.message)
        if request.request_id:
            self.by_request_id[request.request_id] = response
        return response

    def GetExperiment(self, request, context):
        self._enter("GetExperiment", request, context)
        record = self._experiment(request.experiment_id, context)
        return requests_pb2.GetExperimentResponse(experiment=record.message)

    def ListExperiments(self, request, context):
        self._enter("ListExperiments", request, context)
        items = [
            record.message
            for record in self.experiments.values()
            if not request.environment_id or record.message.environment_id == request.environment_id
        ]
        return requests_pb2.ListExperimentsResponse(experiments=items)

    def CancelExperiment(self, request, context):
        self._enter("CancelExperiment", request, context)
        record = self._experiment(request.experiment_id, context)
        if record.message.state not in FINAL:
            self.finish(request.experiment_id, state=5, reason="CANCELLED")
        return requests_pb2.CancelExperimentResponse(experiment=record.message)

    def GetExperimentResults(self, request, context):
        self._enter("GetExperimentResults", request, context)
        record = self._experiment(request.experiment_id, context)
        start = int(request.page_token or 0)
        size = request.page_size or 100
        page = record.samples[start : start + size]
        token = str(start + size) if start + size < len(record.samples) else ""
        scores = [s.scores["exact_match"] for s in record.samples]
        metrics = [
            experiment_pb2.AggregateMetric(
                name="exact_match",
                count=len(scores),
                mean=sum(scores) / len(scores) if scores else 0.0,
            )
        ]
        usage = experiment_pb2.TokenUsage(
            prompt_tokens=sum(s.usage.prompt_tokens for s in record.samples),
            completion_tokens=sum(s.usage.completion_tokens for s in record.samples),
        )
        return requests_pb2.GetExperimentResultsResponse(
            experiment=record.message,
            samples=page,
            metrics=metrics,
            total_usage=usage,
            next_page_token=token,
        )

    def StreamExperimentEvents(self, request, context):
        self._enter("StreamExperimentEvents", request, context)
        record = self._experiment(request.experiment_id, context)
        with self.condition:
            self.active_streams += 1
        try:
            yield from self._events(record, request, context)
        finally:
            with self.condition:
                self.active_streams -= 1

    def _events(self, record: ExperimentRecord, request: Any, context: grpc.ServicerContext) -> Any:
        position = request.after_sequence
        sent = 0
        while context.is_active():
            with self.condition:
                pending = record.events[position:]
                if not pending:
                    if not request.follow or record.message.state in FINAL:
                        return
                    self.condition.wait(0.05)
                    continue
            for event in pending:
                if self.break_stream_after is not None and sent >= self.break_stream_after:
                    self.break_stream_after = None
                    context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (injected)")
                yield requests_pb2.StreamExperimentEventsResponse(event=event)
                position = event.sequence
                sent += 1

    def ListModels(self, request, context):
        self._enter("ListModels", request, context)
        return requests_pb2.ListModelsResponse(
            models=[
                experiment_pb2.Model(
                    name="smollm2", aliases=["gpt-3"], provider="local", context_length=2048
                )
            ]
        )

    # -- API keys --------------------------------------------------------------------------

    def CreateApiKey(self, request, context):
        self._enter("CreateApiKey", request, context)
        if request.request_id in self.by_request_id:
            return self.by_request_id[request.request_id]
        key = gateway_service_pb2.ApiKey(
            id=f"key{len(self.api_keys) + 1}",
            tenant=request.tenant,
            scopes=request.scopes,
            display_name=request.display_name,
            create_time=_now(),
        )
        self.api_keys[key.id] = key
        secret = f"{key.id}.secret-{len(self.api_keys):08d}"
        self.keys.add(secret)
        response = gateway_service_pb2.CreateApiKeyResponse(api_key=key, secret=secret)
        self.by_request_id[request.request_id] = response
        return response

    def ListApiKeys(self, request, context):
        self._enter("ListApiKeys", request, context)
        keys = [
            k
            for k in self.api_keys.values()
            if request.show_revoked or not k.HasField("revoke_time")
        ]
        return gateway_service_pb2.ListApiKeysResponse(api_keys=keys)

    def RevokeApiKey(self, request, context):
        self._enter("RevokeApiKey", request, context)
        key = self.api_keys.get(request.api_key_id)
        if key is None:
            self._abort(
                context,
                ServiceError(
                    grpc.StatusCode.NOT_FOUND, ErrorReason.API_KEY_NOT_FOUND, "no such key"
                ),
            )
        if not key.HasField("revoke_time"):  # revoking a revoked key changes nothing
            key.revoke_time.CopyFrom(_now())
        return gateway_service_pb2.RevokeApiKeyResponse(api_key=key)


class FakeServer:
    """Serves a :class:`FakeGateway` on 127.0.0.1; can be stopped and restarted on its port."""

    def __init__(self, gateway: FakeGateway, port: int = 0) -> None:
        self.gateway = gateway
        self.port = port
        self._server: grpc.Server | None = None

    def start(self) -> FakeServer:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(self.gateway, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"
