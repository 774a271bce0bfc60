"""A page of serialized responses that a server-streaming handler yields at once."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


class ResponsePage(list[bytes]):
    """Serialized responses a server-streaming handler yields together, to be sent one by
    one.

    A handler that reads its responses a page at a time (StreamExperimentEvents) yields
    each page whole: every layer between it and grpc (the in-process link, the gateway's
    forwarding and admission) then passes one item per page, not one per message. The
    error-status wrapper, the last of them, sends the page's messages one by one; code
    that reads a handler's stream itself reads it through :func:`each_response`.
    """

    __slots__ = ()


StreamItem = bytes | ResponsePage


async def each_response(items: AsyncIterable[StreamItem]) -> AsyncIterator[bytes]:
    """The serialized responses of a stream whose items may be pages, one by one."""
    async for item in items:
        if isinstance(item, ResponsePage):
            for message in item:
                yield message
        else:
            yield item
