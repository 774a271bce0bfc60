"""Revocation everywhere at once: gateways tell each other through a Redis channel.

A gateway caches API key lookups for ``key_cache_seconds``. When a key is
revoked through one gateway, that gateway publishes the key's id on
``REVOCATION_CHANNEL``; every gateway listens and drops its cached lookup, so
the next call with the key reads the revocation from the database. A revoked
key is refused by every replica well within a second.

Pub/sub delivers only to listeners connected at that moment. Whenever the
subscription is (re)established, and on every failed attempt while Redis is
away, the listener drops the whole cache: revocations sent meanwhile may have
been missed, and an empty cache is always correct, only slower. Without Redis
a revocation reaches other gateways when their cached lookup expires.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sandbox_sdk.server.gateway.api_keys import ApiKeyStore

log = logging.getLogger(__name__)

REVOCATION_CHANNEL = "sandbox:api-key-revocations"
# How long the listener waits before subscribing again after losing Redis.
RESUBSCRIBE_SECONDS = 0.25
# How long one wait for a message lasts; bounds how late ``stop`` is noticed.
_POLL_SECONDS = 1.0


class RevocationFeed:
    """Publishes this gateway's revocations and applies the other gateways' to ``keys``."""

    def __init__(self, redis: Redis, keys: ApiKeyStore) -> None:
        self._redis = redis
        self._keys = keys
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._announcing: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Starts listening; returns once subscribed, or after one failed attempt."""
        self._loop = asyncio.get_running_loop()
        self._listener = asyncio.create_task(self._listen(), name="api-key-revocations")
        subscribed = asyncio.create_task(self._subscribed.wait())
        await asyncio.wait([subscribed, self._listener], timeout=_POLL_SECONDS)
        subscribed.cancel()

    async def stop(self) -> None:
        """Stops listening; waits for announcements still being sent."""
        if self._announcing:
            await asyncio.wait(self._announcing, timeout=_POLL_SECONDS)
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    def announce(self, key_id: str) -> None:
        """Tells every gateway that ``key_id`` was revoked (sent in the background).

        Safe to call from any thread: the key store's writes run off the event loop.
        """
        if self._loop is None:
            raise RuntimeError("RevocationFeed.announce before start()")
        self._loop.call_soon_threadsafe(self._spawn_publish, key_id)

    def _spawn_publish(self, key_id: str) -> None:
        task = asyncio.create_task(self._publish(key_id))
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def _publish(self, key_id: str) -> None:
        try:
            await self._redis.publish(REVOCATION_CHANNEL, key_id)
        except (RedisError, OSError) as error:
            log.warning(
                "could not announce the revocation of %s through Redis (%s); other gateways"
                " refuse the key once their cached lookup expires",
                key_id,
                error,
            )

    async def _listen(self) -> None:
        while True:
            try:
                await self._follow()
            except (RedisError, OSError) as error:
                self._subscribed.clear()
                self._keys.forget_all()
                log.warning("lost the API key revocation channel in Redis (%s)", error)
                await asyncio.sleep(RESUBSCRIBE_SECONDS)

    async def _follow(self) -> None:
        # redis-py subscribes again by itself after a reconnect; each confirmation
        # ("subscribe") may follow missed messages, so it empties the cache.
        async with self._redis.pubsub() as pubsub:
            await pubsub.subscribe(REVOCATION_CHANNEL)
            while True:
                message: Any = await pubsub.get_message(timeout=_POLL_SECONDS)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    self._keys.forget_all()
                    self._subscribed.set()
                elif message["type"] == "message":
                    self._keys.forget(_text(message["data"]))


def _text(data: bytes | str) -> str:
    return data.decode() if isinstance(data, bytes) else data
