"""A handle on one template: its build, its log, its deletion."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sandbox_sdk.api.v1 import requests_pb2, template_pb2
from sandbox_sdk.client._async import glue
from sandbox_sdk.client._async.streams import AsyncServerStream
from sandbox_sdk.client._async.transport import AsyncTransport
from sandbox_sdk.client.outcome import ensure_template_ready, still_building
from sandbox_sdk.client.request_messages import seconds
from sandbox_sdk.client.retry import RetryPolicy
from sandbox_sdk.client.stream_state import TemplateEventCursor
from sandbox_sdk.errors import SandboxTimeoutError
from sandbox_sdk.models.templates import (
    TemplateBuildEvent,
    TemplateInfo,
    TemplateState,
    TemplateStateChange,
)
from sandbox_sdk.utils.units import DurationLike

NO_PROGRESS_PAUSE = 1.0
"""Seconds to wait before following a build again when its event stream ended early."""


class AsyncTemplate:
    """A template environments start from; ``info`` is the last snapshot, ``refresh()`` a new one.

    Pass it (or its ``id``) as ``create_environment(template=...)``.
    """

    def __init__(self, transport: AsyncTransport, template: template_pb2.Template) -> None:
        self._transport = transport
        self._set(template)

    def _set(self, template: template_pb2.Template) -> None:
        self._proto = template
        self._info: TemplateInfo | None = None

    @property
    def info(self) -> TemplateInfo:
        """The last snapshot of the template."""
        if self._info is None:
            self._info = TemplateInfo.from_proto(self._proto)
        return self._info

    @property
    def id(self) -> str:
        """The template's id (a public template's name)."""
        return self._proto.id

    @property
    def state(self) -> TemplateState:
        """The state in the last snapshot."""
        return self.info.state

    async def refresh(
        self, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> TemplateInfo:
        """Fetches the latest snapshot into ``info`` and returns it."""
        request = requests_pb2.GetTemplateRequest(template_id=self.id)
        response = await self._transport.call("GetTemplate", request, timeout=timeout, retry=retry)
        self._set(response.template)
        return self.info

    async def delete(
        self, *, timeout: float | None = None, retry: RetryPolicy | None = None
    ) -> None:
        """Deletes the template (idempotent); a build in progress stops.

        A template that environments use is refused with
        :class:`FailedPreconditionError` naming them: delete those first.
        """
        request = requests_pb2.DeleteTemplateRequest(template_id=self.id)
        await self._transport.call("DeleteTemplate", request, timeout=timeout, retry=retry)

    def events(
        self,
        *,
        after_sequence: int = 0,
        follow: bool = True,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> AsyncServerStream[TemplateBuildEvent]:
        """The build's events after ``after_sequence``, each exactly once and in order.

        With ``follow`` the stream stays open until the build ends. A broken
        connection is resumed from the last event seen.
        """
        cursor = TemplateEventCursor(self.id, after_sequence, follow)
        return AsyncServerStream(
            self._transport,
            self._transport.rpcs["StreamTemplateBuildEvents"],
            cursor.request,
            cursor.convert,
            timeout=timeout,
            retry=retry,
            resumable=True,
        )

    async def logs(self, *, follow: bool = True) -> AsyncIterator[str]:
        """The build's log lines (close the iterator to stop early)."""
        async with self.events(follow=follow) as stream:
            async for event in stream:
                if isinstance(event.payload, str):
                    yield event.payload

    async def wait(self, timeout: DurationLike | None = None) -> TemplateInfo:
        """Waits until the build ends, following its events; returns the READY template.

        Raises :class:`TemplateBuildFailedError` with the build's failure message
        when it FAILED. ``timeout`` defaults to the ``wait_timeout`` setting
        (600 s); when it runs out, :class:`SandboxTimeoutError` is raised and
        the build goes on.
        """
        limit = seconds(timeout) or self._transport.settings.wait_timeout
        clock = self._transport.retry.clock
        ends_at = clock() + limit
        info = await self.refresh()
        cursor = 0
        while not info.state.is_final:
            remaining = ends_at - clock()
            if remaining <= 0:
                raise still_building(info, limit)
            try:
                seen = await self._follow_until_final(cursor, remaining)
            except SandboxTimeoutError as error:
                raise still_building(await self.refresh(), limit) from error
            if seen == cursor:  # the stream ended with nothing new: do not spin on it
                await glue.sleep(min(NO_PROGRESS_PAUSE, max(ends_at - clock(), 0.0)))
            cursor = seen
            info = await self.refresh()
        ensure_template_ready(info)
        return info

    async def _follow_until_final(self, after_sequence: int, timeout: float) -> int:
        """Reads events until the build ends or the stream does; the last sequence seen."""
        last = after_sequence
        async with self.events(after_sequence=after_sequence, timeout=timeout) as stream:
            async for event in stream:
                last = event.sequence
                payload = event.payload
                if isinstance(payload, TemplateStateChange) and payload.state.is_final:
                    break
        return last

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, state={self.info.state.value})"
