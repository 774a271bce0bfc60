"""Key lookups the cache cannot answer go to the database off the event loop.

With a PostgreSQL store every cache miss is a network round trip; on the loop it
would stall every other tenant's calls for as long.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.gateway.api_keys import ApiKeyRecord, ApiKeyStore, Scope
from sandbox_sdk.server.gateway.authentication import AuthenticationFailedError, Authenticator


class ThreadRecordingStore(ApiKeyStore):
    """An ApiKeyStore that notes which thread each database lookup ran on."""

    lookup_threads: list[threading.Thread]

    def lookup(self, key_id: str) -> ApiKeyRecord | None:
        self.lookup_threads.append(threading.current_thread())
        return super().lookup(key_id)


@pytest.fixture
def store(tmp_path: Path) -> ThreadRecordingStore:
    keys = ThreadRecordingStore(Database(tmp_path / "keys.db"), cache_seconds=60.0)
    keys.lookup_threads = []
    return keys


async def test_a_cache_miss_is_looked_up_on_a_thread_and_a_hit_not_at_all(
    store: ThreadRecordingStore,
) -> None:
    created = store.create("team-a", [Scope.READ])
    store.forget(created.record.id)
    authenticator = Authenticator(store)
    loop_thread = threading.current_thread()

    first = await authenticator.authenticate_async(f"Bearer {created.secret}")
    assert first.id == created.record.id
    assert len(store.lookup_threads) == 1
    assert store.lookup_threads[0] is not loop_thread

    again = await authenticator.authenticate_async(f"Bearer {created.secret}")
    assert again.id == created.record.id
    assert len(store.lookup_threads) == 1  # served from the cache, no lookup at all


async def test_an_unknown_key_is_refused_and_counted_once(store: ThreadRecordingStore) -> None:
    failures: list[str] = []
    authenticator = Authenticator(store, on_failure=failures.append)
    unknown = "sk_0123456789abcdef_" + "A" * 43
    with pytest.raises(AuthenticationFailedError) as caught:
        await authenticator.authenticate_async(f"Bearer {unknown}")
    assert caught.value.reason == ErrorReason.API_KEY_INVALID
    assert failures == [ErrorReason.API_KEY_INVALID]
    assert [thread is threading.current_thread() for thread in store.lookup_threads] == [False]
