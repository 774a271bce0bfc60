"""The experiment RPCs of OrchestratorService, over the ExperimentEngine.

Each method has the RPC's name and the grpc.aio signature ``(request, context)``;
the orchestrator's servicer delegates to them. The tenant comes from the
gateway's metadata; another tenant's experiment is NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from sandbox_sdk.api.v1 import experiment_pb2, requests_pb2
from sandbox_sdk.server import ids, page_tokens
from sandbox_sdk.server.orchestrator.experiments import convert
from sandbox_sdk.server.orchestrator.experiments.engine import ExperimentEngine
from sandbox_sdk.server.orchestrator.experiments.paging import page_size
from sandbox_sdk.server.orchestrator.experiments.records import (
    ExperimentRecord,
    ExperimentState,
)
from sandbox_sdk.server.orchestrator.experiments.spec_messages import SpecMessages
from sandbox_sdk.server.orchestrator.experiments.store import ListFilter
from sandbox_sdk.server.orchestrator.experiments.validation import (
    bind_sandbox_tool,
    validate_create,
    validate_list_filters,
)
from sandbox_sdk.server.response_page import ResponsePage
from sandbox_sdk.server.status import invalid_argument
from sandbox_sdk.server.tenancy import tenant_of

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
# Requests and replies with more inline inputs than this are validated and built
# on a worker thread: converting thousands of inputs takes milliseconds.
_INLINE_WORK_INPUTS = 256


async def _maybe_in_thread(off_loop: bool, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)``, on a worker thread when ``off_loop``."""
    if off_loop:
        return await asyncio.to_thread(function, *args)
    return function(*args)


class ExperimentHandlers:
    """CreateExperiment, GetExperiment, ListExperiments, CancelExperiment,
    GetExperimentResults, StreamExperimentEvents and ListModels."""

    def __init__(self, engine: ExperimentEngine) -> None:
        self.engine = engine
        self._specs = SpecMessages()

    async def CreateExperiment(
        self, request: requests_pb2.CreateExperimentRequest, context: Context
    ) -> requests_pb2.CreateExperimentResponse:
        """Validates and queues an experiment; a retried request id returns the first result."""
        tenant = tenant_of(context)
        large = len(request.spec.inputs) > _INLINE_WORK_INPUTS
        validated = await _maybe_in_thread(
            large,
            validate_create,
            request,
            self.engine.models,
            self.engine.settings.scheduler,
        )
        existing = (
            await self.engine.store.afind_request(tenant, validated.request_id)
            if validated.request_id
            else None
        )
        if existing is None:
            self.engine.sandbox.require_running(tenant, validated.environment_id)
            if validated.spec.sandbox_tool is not None:
                exec_timeout = self.engine.sandbox.exec_timeout_seconds(validated.environment_id)
                validated = bind_sandbox_tool(validated, exec_timeout)
            existing = await self.engine.create(tenant, validated)
        message = await _maybe_in_thread(self._large(existing), self._message, existing)
        return requests_pb2.CreateExperimentResponse(experiment=message)

    async def GetExperiment(
        self, request: requests_pb2.GetExperimentRequest, context: Context
    ) -> requests_pb2.GetExperimentResponse:
        """One experiment of the tenant."""
        record = await self.engine.get(tenant_of(context), _experiment_id(request.experiment_id))
        message = await _maybe_in_thread(self._large(record), self._message, record)
        return requests_pb2.GetExperimentResponse(experiment=message)

    async def ListExperiments(
        self, request: requests_pb2.ListExperimentsRequest, context: Context
    ) -> requests_pb2.ListExperimentsResponse:
        """The tenant's experiments, newest first, filtered and paginated."""
        limit = page_size(request.page_size, 50, 1000)
        validate_list_filters(request.environment_id, dict(request.label_selector))
        filters = ListFilter(
            environment_id=request.environment_id,
            states=_states(request.states),
            labels=dict(request.label_selector),
        )
        tenant = tenant_of(context)
        scope = [tenant, filters.environment_id, filters.states, sorted(filters.labels.items())]
        before = page_tokens.decode(request.page_token, "experiments", scope, _listing_key)
        records = await self.engine.list(tenant, filters, limit + 1, before)
        token = ""
        if len(records) > limit:
            records = records[:limit]
            last_key = [records[-1].create_time, records[-1].id]
            token = page_tokens.encode("experiments", scope, last_key)
        return requests_pb2.ListExperimentsResponse(
            experiments=[self._message(r) for r in records], next_page_token=token
        )

    async def CancelExperiment(
        self, request: requests_pb2.CancelExperimentRequest, context: Context
    ) -> requests_pb2.CancelExperimentResponse:
        """Cancels a queued or running experiment; a finished one comes back unchanged."""
        record = await self.engine.cancel(tenant_of(context), _experiment_id(request.experiment_id))
        message = await _maybe_in_thread(self._large(record), self._message, record)
        return requests_pb2.CancelExperimentResponse(experiment=message)

    async def GetExperimentResults(
        self, request: requests_pb2.GetExperimentResultsRequest, context: Context
    ) -> requests_pb2.GetExperimentResultsResponse:
        """A page of samples, and aggregates and token totals over all samples."""
        experiment_id = _experiment_id(request.experiment_id)
        limit = page_size(request.page_size, 100, 1000)
        tenant = tenant_of(context)
        scope = [tenant, experiment_id]
        key = page_tokens.decode(request.page_token, "samples", scope, _sample_key)
        page = await self.engine.results(tenant, experiment_id, limit, key)
        token = ""
        if page.has_more and page.samples:
            last = page.samples[-1]
            token = page_tokens.encode("samples", scope, [last.input_index, last.repeat])
        return requests_pb2.GetExperimentResultsResponse(
            experiment=self._message(page.experiment),
            samples=[convert.sample_to_proto(s) for s in page.samples],
            metrics=[convert.aggregate_to_proto(n, s) for n, s in page.aggregates.metrics],
            total_usage=experiment_pb2.TokenUsage(
                prompt_tokens=page.aggregates.prompt_tokens,
                completion_tokens=page.aggregates.completion_tokens,
            ),
            next_page_token=token,
        )

    async def StreamExperimentEvents(
        self, request: requests_pb2.StreamExperimentEventsRequest, context: Context
    ) -> AsyncIterator[ResponsePage]:
        """The experiment's events after ``after_sequence``; with ``follow``, until it ends.
        Each response goes out serialized, as it was made from the stored event, in the
        pages they were read in."""
        if request.after_sequence < 0:
            raise invalid_argument(
                [("after_sequence", "use 0 for all events, or the last sequence you received")]
            )
        pages = await self.engine.open_stream(
            tenant_of(context),
            _experiment_id(request.experiment_id),
            request.after_sequence,
            follow=request.follow,
        )
        async with contextlib.aclosing(pages):  # a closed call drops its waiter at once
            async for page in pages:
                yield ResponsePage(page)

    async def ListModels(
        self, request: requests_pb2.ListModelsRequest, context: Context
    ) -> requests_pb2.ListModelsResponse:
        """The models served, sorted by name."""
        models = self.engine.models.models()
        limit = page_size(request.page_size, len(models) or 1, max(len(models), 1))
        start = page_tokens.decode(request.page_token, "models", None, _model_index) or 0
        page = models[start : start + limit]
        more = start + limit < len(models)
        token = page_tokens.encode("models", None, start + limit) if more else ""
        return requests_pb2.ListModelsResponse(
            models=[convert.model_to_proto(m.config) for m in page], next_page_token=token
        )

    def _message(self, record: ExperimentRecord) -> experiment_pb2.Experiment:
        spec = self._specs.of(record)
        return convert.experiment_to_proto(record, self.engine.queue_position(record.id), spec)

    def _large(self, record: ExperimentRecord) -> bool:
        """Whether building the record's message is worth a worker thread."""
        return len(record.spec.inputs) > _INLINE_WORK_INPUTS and not self._specs.cached(record.id)


def _experiment_id(experiment_id: str) -> str:
    if not ids.is_valid(experiment_id, ids.EXPERIMENT):
        raise invalid_argument(
            [("experiment_id", "give an experiment id like exp-<orchestrator>-<16 hex>")]
        )
    return experiment_id


def _states(values: Any) -> tuple[ExperimentState, ...]:
    states = []
    for index, value in enumerate(values):
        state = convert.state_from_proto(value)
        if state is None:
            raise invalid_argument([(f"states[{index}]", "use a defined ExperimentState")])
        states.append(state)
    return tuple(states)


def _listing_key(position: Any) -> tuple[float, str]:
    """An experiments cursor: the create time and id of the last experiment listed."""
    create_time, experiment_id = position
    if not _is_number(create_time) or not isinstance(experiment_id, str):
        raise TypeError("an experiments cursor is [create_time, experiment_id]")
    return float(create_time), experiment_id


def _sample_key(position: Any) -> tuple[int, int]:
    """A samples cursor: the input index and repeat of the last sample listed."""
    input_index, repeat = position
    if not _is_integer(input_index) or not _is_integer(repeat):
        raise TypeError("a samples cursor is [input_index, repeat]")
    return input_index, repeat


def _model_index(position: Any) -> int:
    """A models cursor: the index of the next model."""
    if not _is_integer(position) or position < 0:
        raise TypeError("a models cursor is an index")
    return int(position)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
