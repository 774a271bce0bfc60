"""Experiment reads served from the archive when the orchestrator that ran them is gone.

Orchestrators with an ``archive:`` ship every finished experiment to the
shared store (``store/archive.py``). When GetExperiment, GetExperimentResults,
StreamExperimentEvents or CancelExperiment targets an experiment whose owner
is gone from the pool, lost or unreachable, the gateway answers from there
with the very messages the orchestrator returned. A finished experiment is
final, so CancelExperiment returns it unchanged (as the orchestrator would)
and an event stream ends after its last event even with ``follow``.

Pages of results use the project's page-token codec, scoped to the tenant and
the experiment as the orchestrator scopes them. Reads run on worker threads;
another tenant's experiment is not in the archive for the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from sandbox_sdk.api.v1 import experiment_pb2, requests_pb2
from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server import page_tokens
from sandbox_sdk.server.status import ServiceError, invalid_argument
from sandbox_sdk.server.store.archive import ExperimentArchive

# What GetExperimentResults pages by default and at most (as the orchestrator does).
_RESULTS_PAGE_DEFAULT = 100
_RESULTS_PAGE_MAX = 1000
_EVENTS_PAGE = 500
UNARY_METHODS = frozenset({"GetExperiment", "GetExperimentResults", "CancelExperiment"})
STREAM_METHODS = frozenset({"StreamExperimentEvents"})
# The errors about an experiment's owner after which the archive is asked.
FALLBACK_REASONS = frozenset(
    {
        ErrorReason.ORCHESTRATOR_LOST,
        ErrorReason.ORCHESTRATOR_UNAVAILABLE,
        ErrorReason.EXPERIMENT_NOT_FOUND,
    }
)


def falls_back(method: str, error: ServiceError) -> bool:
    """Whether the archive may answer ``method`` after the owner lookup failed with ``error``."""
    return (method in UNARY_METHODS or method in STREAM_METHODS) and (
        error.reason in FALLBACK_REASONS
    )


def not_archived(error: ServiceError) -> ServiceError:
    """``error`` (about an experiment the archive does not hold), its message saying so when
    the orchestrator is lost: same code, reason and metadata."""
    if error.reason != ErrorReason.ORCHESTRATOR_LOST:
        return error
    return ServiceError(
        error.code,
        error.reason,
        f"{error.message}. Its finished experiments stay readable from the archive, which"
        " does not hold this one: it had not finished, or its orchestrator ships none"
        " (see archive: in the orchestrator configuration)",
        retry_after=error.retry_after,
        metadata=error.metadata,
    )


class ArchivedExperiments:
    """Answers experiment reads from the archive; ``None`` when it does not hold the experiment."""

    def __init__(self, archive: ExperimentArchive) -> None:
        self._archive = archive

    async def unary(self, method: str, request: bytes, tenant: str) -> bytes | None:
        """The serialized response to a unary experiment call, or ``None``."""
        if method == "GetExperimentResults":
            return await self._results(request, tenant)
        request_type: Any = (
            requests_pb2.GetExperimentRequest
            if method == "GetExperiment"
            else requests_pb2.CancelExperimentRequest
        )
        experiment_id = _parse(request_type, request).experiment_id
        header = await asyncio.to_thread(self._archive.experiment, tenant, experiment_id)
        if header is None:
            return None
        experiment = experiment_pb2.Experiment.FromString(header.experiment)
        response: Any = (
            requests_pb2.GetExperimentResponse(experiment=experiment)
            if method == "GetExperiment"
            else requests_pb2.CancelExperimentResponse(experiment=experiment)
        )
        return bytes(response.SerializeToString())

    async def _results(self, request: bytes, tenant: str) -> bytes | None:
        parsed = _parse(requests_pb2.GetExperimentResultsRequest, request)
        experiment_id = parsed.experiment_id
        if parsed.page_size < 0:
            raise invalid_argument(
                [("page_size", f"use 0 (for {_RESULTS_PAGE_DEFAULT}) to {_RESULTS_PAGE_MAX}")]
            )
        limit = min(parsed.page_size or _RESULTS_PAGE_DEFAULT, _RESULTS_PAGE_MAX)
        scope = [tenant, experiment_id]
        after = page_tokens.decode(parsed.page_token, "samples", scope, _sample_key)
        header = await asyncio.to_thread(self._archive.experiment, tenant, experiment_id)
        if header is None:
            return None
        samples = await asyncio.to_thread(
            self._archive.samples, tenant, experiment_id, limit + 1, after
        )
        token = ""
        if len(samples) > limit:
            samples = samples[:limit]
            token = page_tokens.encode(
                "samples", scope, [samples[-1].input_index, samples[-1].repeat]
            )
        response = requests_pb2.GetExperimentResultsResponse.FromString(header.summary)
        response.experiment.MergeFromString(header.experiment)
        for sample in samples:
            response.samples.add().MergeFromString(sample.sample)
        response.next_page_token = token
        return bytes(response.SerializeToString())

    async def stream(self, request: bytes, tenant: str) -> AsyncIterator[bytes] | None:
        """The serialized StreamExperimentEvents responses, or ``None``."""
        parsed = _parse(requests_pb2.StreamExperimentEventsRequest, request)
        if parsed.after_sequence < 0:
            raise invalid_argument(
                [("after_sequence", "use 0 for all events, or the last sequence you received")]
            )
        experiment_id = parsed.experiment_id
        header = await asyncio.to_thread(self._archive.experiment, tenant, experiment_id)
        if header is None:
            return None
        return self._events(tenant, experiment_id, parsed.after_sequence)

    async def _events(self, tenant: str, experiment_id: str, after: int) -> AsyncIterator[bytes]:
        while True:
            events = await asyncio.to_thread(
                self._archive.events, tenant, experiment_id, after, _EVENTS_PAGE
            )
            for event in events:
                response = requests_pb2.StreamExperimentEventsResponse()
                response.event.MergeFromString(event.event)
                yield bytes(response.SerializeToString())
            if len(events) < _EVENTS_PAGE:
                return
            after = events[-1].sequence


def _parse(message_type: Any, request: bytes) -> Any:
    try:
        return message_type.FromString(request)
    except Exception:  # protobuf's DecodeError is not always a subclass we can name
        raise invalid_argument(
            [("request", f"not a serialized {message_type.DESCRIPTOR.name}")]
        ) from None


def _sample_key(position: Any) -> tuple[int, int]:
    """A samples cursor: the input index and repeat of the last sample listed."""
    input_index, repeat = position
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (input_index, repeat)):
        raise TypeError("a samples cursor is [input_index, repeat]")
    return input_index, repeat
