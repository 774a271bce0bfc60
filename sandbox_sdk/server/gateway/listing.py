"""List calls across several orchestrators: fan out, merge newest first, one page token.

The gateway's page token (signed and bound to the tenant, see
``server.page_tokens``) records, per orchestrator still holding items, the
orchestrator's own token for the page being read and how many items of that
page were already returned. Each page merges the orchestrators' pages by
create time (newest first), fetching an orchestrator's next page when its
current one runs out, so the merged order is exact.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from google.protobuf.message import Message

from sandbox_sdk.errors import STATUS_DETAILS_KEY, ErrorReason
from sandbox_sdk.server import page_tokens
from sandbox_sdk.server.gateway.methods import MethodSpec
from sandbox_sdk.server.gateway.orchestrators import (
    OrchestratorLink,
    OrchestratorPool,
    call_metadata,
)
from sandbox_sdk.server.status import ServiceError, invalid_argument

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_ITEMS_FIELD = {
    "ListEnvironments": "environments",
    "ListExperiments": "experiments",
    "ListTemplates": "templates",
}


def metadata_pairs(metadata: object) -> tuple[tuple[str, str | bytes], ...]:
    """``(key, value)`` pairs of call metadata (grpc-stubs types it as a Mapping)."""
    return tuple(cast(Iterable[tuple[str, str | bytes]], metadata or ()))


def is_transport_failure(error: grpc.aio.AioRpcError) -> bool:
    """Whether an UNAVAILABLE came from the connection rather than from the orchestrator."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return all(key != STATUS_DETAILS_KEY for key, _ in metadata_pairs(error.trailing_metadata()))


@dataclass
class _Cursor:
    link: OrchestratorLink
    page_token: str
    consumed: int
    items: deque[Any] = field(default_factory=deque)
    next_token: str = ""


def encode_page_token(kind: str, tenant: str, positions: dict[str, tuple[str, int]]) -> str:
    """The gateway token of a ``kind`` listing of ``tenant`` at the given per-orchestrator
    ``(token, consumed)`` positions; empty when no orchestrator holds more."""
    if not positions:
        return ""
    return page_tokens.encode(kind, tenant, {k: list(v) for k, v in positions.items()})


def decode_page_token(kind: str, tenant: str, token: str) -> dict[str, tuple[str, int]]:
    """Per-orchestrator positions of a gateway token; INVALID_ARGUMENT if it is not one
    this gateway issued for a ``kind`` listing of ``tenant``."""
    return page_tokens.decode(token, kind, tenant, _parse_positions) or {}


def _parse_positions(raw: Any) -> dict[str, tuple[str, int]]:
    positions = {str(k): (str(v[0]), int(v[1])) for k, v in raw.items()}
    if any(consumed < 0 for _, consumed in positions.values()):
        raise ValueError("a position consumes a negative count of items")
    return positions


def _newest_first_key(item: Any) -> tuple[int, int, str]:
    return (item.create_time.seconds, item.create_time.nanos, item.id)


class FanOutLister:
    """Serves ListEnvironments, ListExperiments and ListTemplates from every available
    orchestrator (the public templates from the first configured one only)."""

    def __init__(self, pool: OrchestratorPool) -> None:
        self._pool = pool

    async def page(
        self,
        spec: MethodSpec,
        request: Any,
        tenant: str,
        request_id: str,
        timeout: float | None,
    ) -> Message:
        """One merged page."""
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise invalid_argument([("page_size", f"use 0 (for {DEFAULT_PAGE_SIZE}) to 1000")])
        if request.page_token:
            positions = decode_page_token(spec.name, tenant, request.page_token)
        else:
            positions = {link.id: ("", 0) for link in self._pool.links}
        cursors = [
            _Cursor(link, *positions[link.id])
            for link in self._pool.available()
            if link.id in positions
        ]
        items_field = _ITEMS_FIELD[spec.name]

        async def fill(cursor: _Cursor) -> _Cursor | None:
            sub = type(request)()
            sub.CopyFrom(request)
            sub.page_token = cursor.page_token
            sub.page_size = page_size
            if spec.name == "ListTemplates" and cursor.link is not self._pool.links[0]:
                # Every orchestrator builds the public templates; one lists them.
                sub.hide_public = True
            try:
                raw = await cursor.link.unary(spec.upstream_path)(
                    sub.SerializeToString(),
                    timeout=timeout,
                    metadata=call_metadata(cursor.link, tenant, request_id),
                )
            except grpc.aio.AioRpcError as error:
                if not is_transport_failure(error):
                    raise
                self._pool.call_failed(cursor.link)
                return None
            page: Any = spec.response_type.FromString(raw)
            cursor.items = deque(list(getattr(page, items_field))[cursor.consumed :])
            cursor.next_token = page.next_page_token
            return cursor

        live = [c for c in await asyncio.gather(*(fill(c) for c in cursors)) if c is not None]
        if not live:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                ErrorReason.NO_HEALTHY_ORCHESTRATOR,
                "no orchestrator holding this list can be reached now; retry later",
                retry_after=2.0,
            )
        merged = await self._merge(live, page_size, fill)
        response = spec.response_type()
        getattr(response, items_field).extend(merged)
        cast(Any, response).next_page_token = encode_page_token(
            spec.name, tenant, self._positions(live)
        )
        return response

    @staticmethod
    async def _merge(
        cursors: Sequence[_Cursor],
        page_size: int,
        fill: Callable[[_Cursor], Awaitable[_Cursor | None]],
    ) -> list[Any]:
        merged: list[Any] = []
        while len(merged) < page_size:
            for cursor in cursors:
                if not cursor.items and cursor.next_token:
                    cursor.page_token, cursor.consumed = cursor.next_token, 0
                    cursor.next_token = ""
                    await fill(cursor)
            ready = [c for c in cursors if c.items]
            if not ready:
                break
            best = max(ready, key=lambda c: _newest_first_key(c.items[0]))
            merged.append(best.items.popleft())
            best.consumed += 1
        return merged

    @staticmethod
    def _positions(cursors: Sequence[_Cursor]) -> dict[str, tuple[str, int]]:
        positions: dict[str, tuple[str, int]] = {}
        for cursor in cursors:
            if cursor.items:
                positions[cursor.link.id] = (cursor.page_token, cursor.consumed)
            elif cursor.next_token:
                positions[cursor.link.id] = (cursor.next_token, 0)
        return positions
