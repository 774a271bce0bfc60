"""Key lookups the cache cannot answer go to the database off the event loop, and a key
proved before is not parsed or hashed again, yet refused at once when revoked.

With a PostgreSQL store every cache miss is a network round trip; on the loop it
would stall every other tenant's calls for as long.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.gateway import authentication
from sandbox_sdk.server.gateway.api_keys import ApiKeyRecord, ApiKeyStore, Scope, hash_key
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


# -- keys proved before: a repeated authorization value is not parsed or hashed again ----


async def test_a_proved_key_is_not_hashed_again(
    store: ThreadRecordingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = store.create("team-a", [Scope.READ])
    authenticator = Authenticator(store)
    hashed: list[str] = []

    def counted_hash(key: str) -> bytes:
        hashed.append(key)
        return hash_key(key)

    monkeypatch.setattr(f"{authentication.__name__}.hash_key", counted_hash)
    for _ in range(3):
        record = await authenticator.authenticate_async(f"Bearer {created.secret}")
        assert record.id == created.record.id
    assert hashed == [created.secret]


async def test_a_proved_key_revoked_here_is_refused_at_once(store: ThreadRecordingStore) -> None:
    created = store.create("team-a", [Scope.READ])
    authenticator = Authenticator(store)
    await authenticator.authenticate_async(f"Bearer {created.secret}")
    store.revoke(created.record.id)
    assert await _refusal(authenticator, created.secret) == ErrorReason.API_KEY_REVOKED


async def test_a_proved_key_revoked_by_another_gateway_is_refused_once_told(
    tmp_path: Path, store: ThreadRecordingStore
) -> None:
    created = store.create("team-a", [Scope.READ])
    authenticator = Authenticator(store)
    await authenticator.authenticate_async(f"Bearer {created.secret}")
    ApiKeyStore(Database(tmp_path / "keys.db")).revoke(created.record.id)
    store.forget(created.record.id)  # the revocation notice
    assert await _refusal(authenticator, created.secret) == ErrorReason.API_KEY_REVOKED


async def test_a_proved_key_is_checked_in_full_once_its_cache_entry_ages_out(
    tmp_path: Path,
) -> None:
    store = ApiKeyStore(Database(tmp_path / "keys.db"), cache_seconds=0.0)
    created = store.create("team-a", [Scope.READ])
    authenticator = Authenticator(store)
    await authenticator.authenticate_async(f"Bearer {created.secret}")
    ApiKeyStore(Database(tmp_path / "keys.db")).revoke(created.record.id)  # no notice
    assert await _refusal(authenticator, created.secret) == ErrorReason.API_KEY_REVOKED


async def test_a_proved_key_that_expires_is_refused(
    store: ThreadRecordingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = store.create("team-a", [Scope.READ], ttl_seconds=60.0)
    authenticator = Authenticator(store)
    await authenticator.authenticate_async(f"Bearer {created.secret}")
    later = time.time() + 61.0
    monkeypatch.setattr(time, "time", lambda: later)  # the module authentication reads
    assert await _refusal(authenticator, created.secret) == ErrorReason.API_KEY_EXPIRED


async def test_a_wrong_secret_for_a_proved_key_id_is_refused(store: ThreadRecordingStore) -> None:
    created = store.create("team-a", [Scope.READ])
    authenticator = Authenticator(store)
    await authenticator.authenticate_async(f"Bearer {created.secret}")
    forged = created.secret[:-1] + ("A" if created.secret[-1] != "A" else "B")
    assert await _refusal(authenticator, forged) == ErrorReason.API_KEY_INVALID


async def test_variants_of_a_good_key_cannot_grow_the_proved_keys_without_bound(
    store: ThreadRecordingStore,
) -> None:
    """An attacker holding one key sends it with ever more trailing spaces (each a
    different authorization value that proves the same key)."""
    created = store.create("team-a", [Scope.READ])
    authenticator = Authenticator(store)
    for spaces in range(authentication._PROVED_SIZE + 50):
        await authenticator.authenticate_async(f"Bearer {created.secret}" + " " * spaces)
    assert len(authenticator._proved) <= authentication._PROVED_SIZE


async def _refusal(authenticator: Authenticator, key: str) -> str:
    """The reason the authenticator refuses ``key`` for."""
    with pytest.raises(AuthenticationFailedError) as caught:
        await authenticator.authenticate_async(f"Bearer {key}")
    return caught.value.reason
