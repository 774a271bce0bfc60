"""A handle on one experiment (sync)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from sandbox_sdk.api.v1 import requests_pb2
from sandbox_sdk.client.outcome import ensure_succeeded, still_running_error
from sandbox_sdk.client.requests import seconds
from sandbox_sdk.client.retry import RetryPolicy
from sandbox_sdk.client.stream_state import EventCursor
from sandbox_sdk.client.streams import ServerStream
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

if TYPE_CHECKING:
    from sandbox_sdk.client.sync_client import SandboxClient

RESULTS_PAGE_SIZE = 1000


class Experiment:
    """An experiment; ``info`` is the last snapshot, ``status`` asks the service again."""

    def __init__(self, client: SandboxClient, info: ExperimentInfo) -> None:
        self._client = client
        self.info = info

    @property
    def id(self) -> str:
        """The experiment's id."""
        return self.info.id

    @property
    def status(self) -> ExperimentState:
        """The current state, fetched from the service."""
        return self.refresh().state

    @property
    def state(self) -> ExperimentState:
        """The current state, fetched from the service (same as ``status``)."""
        return self.status

    def refresh(
        self, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> ExperimentInfo:
        """Fetches the latest snapshot into ``info`` and returns it."""
        response = self._client._call(
            "GetExperiment",
            requests_pb2.GetExperimentRequest(experiment_id=self.id),
            timeout=timeout,
            retry=retry,
        )
        self.info = ExperimentInfo.from_proto(response.experiment)
        return self.info

    def cancel(
        self, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> ExperimentInfo:
        """Cancels the experiment if it has not finished; returns the new snapshot."""
        response = self._client._call(
            "CancelExperiment",
            requests_pb2.CancelExperimentRequest(experiment_id=self.id),
            timeout=timeout,
            retry=retry,
        )
        self.info = ExperimentInfo.from_proto(response.experiment)
        return self.info

    def wait(self, timeout: DurationLike | None = None) -> ExperimentInfo:
        """Blocks until the experiment reaches a final state, following its events.

        ``timeout`` defaults to the ``wait_timeout`` setting (600 s); when it runs
        out, :class:`SandboxTimeoutError` is raised and the experiment goes on.
        """
        limit = seconds(timeout) or self._client.settings.wait_timeout
        clock = self._client.retry_policy.clock
        ends_at = clock() + limit
        info = self.refresh()
        while not info.state.is_final:
            remaining = ends_at - clock()
            if remaining <= 0:
                raise still_running_error(info, limit)
            try:
                self._follow_until_final(info.last_sequence, remaining)
            except SandboxTimeoutError as error:
                raise still_running_error(self.refresh(), limit) from error
            info = self.refresh()
        return info

    def _follow_until_final(self, after_sequence: int, timeout: float) -> None:
        with self.events(after_sequence=after_sequence, timeout=timeout) as stream:
            for event in stream:
                if isinstance(event.payload, StateChange) and event.payload.state.is_final:
                    return

    def get_results(
        self, timeout: DurationLike | None = None, *, raise_on_failure: bool = True
    ) -> ExperimentResults:
        """Waits for the experiment to finish (see :meth:`wait`), then fetches all results.

        Raises :class:`ExperimentFailedError` if it ended FAILED, TIMED_OUT or
        CANCELLED, unless ``raise_on_failure`` is false.
        """
        info = self.wait(timeout)
        if raise_on_failure:
            ensure_succeeded(info)
        return ExperimentResults.from_pages(self._result_pages())

    def _result_pages(self) -> Iterator[requests_pb2.GetExperimentResultsResponse]:
        request = requests_pb2.GetExperimentResultsRequest(
            experiment_id=self.id, page_size=RESULTS_PAGE_SIZE
        )
        while True:
            page = self._client._call("GetExperimentResults", request)
            yield page
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def events(
        self,
        *,
        after_sequence: int = 0,
        follow: bool = True,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> ServerStream[ExperimentEvent]:
        """The experiment's events after ``after_sequence``, each exactly once and in order.

        With ``follow`` the stream stays open until the experiment finishes. A
        broken connection is resumed from the last event seen until the retry
        policy's deadline passes without progress.
        """
        cursor = EventCursor(self.id, after_sequence, follow)
        return ServerStream(
            self._client._transport,
            self._client._transport.rpcs["StreamExperimentEvents"],
            cursor.request,
            cursor.convert,
            timeout=timeout,
            retry=retry,
            resumable=True,
        )

    def stream_logs(self, *, follow: bool = True) -> Iterator[LogLine]:
        """The experiment's log lines (close the iterator to stop early)."""
        with self.events(follow=follow) as stream:
            for event in stream:
                if isinstance(event.payload, LogLine):
                    yield event.payload

    def stream_metrics(self, *, follow: bool = True) -> Iterator[MetricSample]:
        """The experiment's metric samples (close the iterator to stop early)."""
        with self.events(follow=follow) as stream:
            for event in stream:
                if isinstance(event.payload, MetricSample):
                    yield event.payload

    def __repr__(self) -> str:
        return f"Experiment(id={self.id!r}, state={self.info.state.value})"
