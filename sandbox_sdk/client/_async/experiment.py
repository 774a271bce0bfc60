"""A handle on one experiment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sandbox_sdk.api.v1 import requests_pb2
from sandbox_sdk.client._async import glue
from sandbox_sdk.client._async.streams import AsyncServerStream
from sandbox_sdk.client._async.transport import AsyncTransport
from sandbox_sdk.client.outcome import ensure_succeeded, still_running_error
from sandbox_sdk.client.request_messages import seconds
from sandbox_sdk.client.retry import RetryPolicy
from sandbox_sdk.client.stream_state import EventCursor
from sandbox_sdk.errors import SandboxTimeoutError
from sandbox_sdk.models.experiment import (
    ExperimentEvent,
    ExperimentInfo,
    ExperimentState,
    LogLine,
    MetricSample,
    StateChange,
)
from sandbox_sdk.models.results import ExperimentResults
from sandbox_sdk.utils.units import DurationLike

RESULTS_PAGE_SIZE = 1000


class AsyncExperiment:
    """An experiment; ``info`` is the last snapshot, ``status()`` asks the service again."""

    def __init__(self, transport: AsyncTransport, info: ExperimentInfo) -> None:
        self._transport = transport
        self.info = info

    @property
    def id(self) -> str:
        """The experiment's id."""
        return self.info.id

    @glue.was_a_sync_property
    async def status(self) -> ExperimentState:
        """The current state, fetched from the service."""
        return (await self.refresh()).state

    @glue.was_a_sync_property
    async def state(self) -> ExperimentState:
        """The current state, fetched from the service (same as ``status``)."""
        return await self.status()

    async def refresh(
        self, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> ExperimentInfo:
        """Fetches the latest snapshot into ``info`` and returns it."""
        request = requests_pb2.GetExperimentRequest(experiment_id=self.id)
        return await self._snapshot_from("GetExperiment", request, timeout, retry)

    async def cancel(
        self, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> ExperimentInfo:
        """Cancels the experiment if it has not finished; returns the new snapshot."""
        request = requests_pb2.CancelExperimentRequest(experiment_id=self.id)
        return await self._snapshot_from("CancelExperiment", request, timeout, retry)

    async def _snapshot_from(
        self, method: str, request: Any, timeout: float | None, retry: RetryPolicy | None
    ) -> ExperimentInfo:
        """Calls a method answering with the experiment, and keeps that snapshot."""
        response = await self._transport.call(method, request, timeout=timeout, retry=retry)
        self.info = ExperimentInfo.from_proto(response.experiment)
        return self.info

    async def wait(self, timeout: DurationLike | None = None) -> ExperimentInfo:
        """Waits until the experiment reaches a final state, following its events.

        ``timeout`` defaults to the ``wait_timeout`` setting (600 s); when it runs
        out, :class:`SandboxTimeoutError` is raised and the experiment goes on.
        """
        limit = seconds(timeout) or self._transport.settings.wait_timeout
        clock = self._transport.retry.clock
        ends_at = clock() + limit
        info = await self.refresh()
        while not info.state.is_final:
            remaining = ends_at - clock()
            if remaining <= 0:
                raise still_running_error(info, limit)
            try:
                await self._follow_until_final(info.last_sequence, remaining)
            except SandboxTimeoutError as error:
                raise still_running_error(await self.refresh(), limit) from error
            info = await self.refresh()
        return info

    async def _follow_until_final(self, after_sequence: int, timeout: float) -> None:
        async with self.events(after_sequence=after_sequence, timeout=timeout) as stream:
            async for event in stream:
                if isinstance(event.payload, StateChange) and event.payload.state.is_final:
                    return

    async def get_results(
        self, timeout: DurationLike | None = None, *, raise_on_failure: bool = True
    ) -> ExperimentResults:
        """Waits for the experiment to finish (see :meth:`wait`), then fetches all results.

        Raises :class:`ExperimentFailedError` if it ended FAILED, TIMED_OUT or
        CANCELLED, unless ``raise_on_failure`` is false.
        """
        info = await self.wait(timeout)
        if raise_on_failure:
            ensure_succeeded(info)
        request = requests_pb2.GetExperimentResultsRequest(
            experiment_id=self.id, page_size=RESULTS_PAGE_SIZE
        )
        pages = [page async for page in self._transport.pages("GetExperimentResults", request)]
        return ExperimentResults.from_pages(pages)

    def events(
        self,
        *,
        after_sequence: int = 0,
        follow: bool = True,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> AsyncServerStream[ExperimentEvent]:
        """The experiment's events after ``after_sequence``, each exactly once and in order.

        With ``follow`` the stream stays open until the experiment finishes. A
        broken connection is resumed from the last event seen until the retry
        policy's deadline passes without progress.
        """
        cursor = EventCursor(self.id, after_sequence, follow)
        return AsyncServerStream(
            self._transport,
            self._transport.rpcs["StreamExperimentEvents"],
            cursor.request,
            cursor.convert,
            timeout=timeout,
            retry=retry,
            resumable=True,
        )

    async def stream_logs(self, *, follow: bool = True) -> AsyncIterator[LogLine]:
        """The experiment's log lines (close the iterator to stop early)."""
        async with self.events(follow=follow) as stream:
            async for event in stream:
                if isinstance(event.payload, LogLine):
                    yield event.payload

    async def stream_metrics(self, *, follow: bool = True) -> AsyncIterator[MetricSample]:
        """The experiment's metric samples (close the iterator to stop early)."""
        async with self.events(follow=follow) as stream:
            async for event in stream:
                if isinstance(event.payload, MetricSample):
                    yield event.payload

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, state={self.info.state.value})"
