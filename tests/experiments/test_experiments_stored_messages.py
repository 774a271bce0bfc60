"""Each event's ExperimentEvent message is serialized once, when it is committed, and stored
as the event itself; StreamExperimentEvents sends those bytes framed as its response, and
typed reads parse them back (issue #16).

A database from before the stored messages upgrades in place: its rows have none, only a
JSON payload, and are converted from it, so the client receives the very same bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time
from pathlib import Path

import pytest

from sandbox_sdk.api.v1 import experiment_pb2, requests_pb2
from sandbox_sdk.server.database import Database
from sandbox_sdk.server.orchestrator.experiments import (
    ExperimentEngine,
    ExperimentHandlers,
    ExperimentSettings,
    convert,
)
from sandbox_sdk.server.orchestrator.experiments.records import (
    EventPayload,
    ExperimentChanges,
    ExperimentState,
    Failure,
    LogEvent,
    LogLevel,
    MetricEvent,
    OutputEvent,
    StateEvent,
    StoredEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from sandbox_sdk.server.orchestrator.experiments.spec import ExperimentSpec, InputSpec
from sandbox_sdk.server.orchestrator.experiments.store import (
    MIGRATIONS,
    ExperimentStore,
    NewExperiment,
)
from sandbox_sdk.server.response_page import each_response

from .conftest import TenantContext
from .exp_support import SubprocessSandbox, create_request, make_spec, wait_final

CTX = TenantContext()
Response = requests_pb2.StreamExperimentEventsResponse

EVERY_KIND: list[EventPayload] = [
    StateEvent(ExperimentState.RUNNING),
    LogEvent(LogLevel.WARNING, "a log line"),
    MetricEvent("latency", 0.25, "s", input_index=3, repeat=1),
    OutputEvent(0, 0, "héllo \n wörld \x00 " + "x" * 300),
    ToolCallEvent(0, 0, 1, "ls -l", ("ls", "-l")),
    ToolResultEvent(0, 0, 1, 2, "out", "err", truncated=True),
    StateEvent(ExperimentState.FAILED, Failure("TIMEOUT", "it took too long"), 0),
]


def _new(experiment_id: str) -> NewExperiment:
    return NewExperiment(
        id=experiment_id,
        tenant="default",
        environment_id="env-1",
        spec=ExperimentSpec(model="fake", inputs=(InputSpec(prompt="p", expected="e"),)),
        model_name="fake",
        total_samples=1,
        request_id="",
        queue_order=1,
        create_time=time.time(),
    )


def _expected(event: StoredEvent) -> bytes:
    """The response today's conversion makes of an event: protobuf's own serialization."""
    return bytes(Response(event=convert.event_to_proto(event)).SerializeToString())


async def _archived_events(store: ExperimentStore, experiment_id: str) -> list[tuple[int, bytes]]:
    contents = await store.aarchive_contents(experiment_id)
    assert contents is not None
    return contents.events


def _forget_messages(path: Path, where: str = "1") -> None:
    """Makes the stored events matching ``where`` look as if written before messages were
    stored: a JSON payload (in the shape written then) and no message."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            f"SELECT experiment_id, sequence, message FROM exp_events WHERE {where}"  # noqa: S608
        ).fetchall()
        for experiment_id, sequence, message in rows:
            payload = convert.event_payload(experiment_pb2.ExperimentEvent.FromString(message))
            conn.execute(
                "UPDATE exp_events SET payload = ?, message = NULL"
                " WHERE experiment_id = ? AND sequence = ?",
                (json.dumps(dataclasses.asdict(payload)), experiment_id, sequence),
            )


def _downgrade(path: Path) -> None:
    """Turns the database back into one made before the stored messages' migration."""
    _forget_messages(path)
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE exp_events DROP COLUMN message")
        conn.execute(
            "DELETE FROM schema_migrations WHERE component = 'experiments' AND version = ?",
            (len(MIGRATIONS),),
        )


async def test_every_kind_of_event_streams_as_protobuf_would_frame_it(tmp_path: Path) -> None:
    store = ExperimentStore(Database(tmp_path / "orchestrator.db"))
    new = _new("exp-o1-0000000000000001")
    await store.insert(new, StateEvent(ExperimentState.QUEUED))
    await store.submit_commit(
        new.id, EVERY_KIND, ExperimentChanges(state=ExperimentState.FAILED, end_time=1.0)
    )

    page = await store.aresponse_page(new.id, 0, 100)
    events = store.events_after(new.id, 0, 100)
    payloads = store.db.query("SELECT DISTINCT payload FROM exp_events")
    await store.aclose()

    assert [tuple(row) for row in payloads] == [("",)]  # stored once: as the message
    assert page.events == [_expected(e) for e in events]
    assert [e.payload for e in events] == [StateEvent(ExperimentState.QUEUED), *EVERY_KIND]
    assert page.final_at == len(EVERY_KIND)  # the FAILED state, not the RUNNING one
    assert page.last_sequence == len(EVERY_KIND) + 1


async def test_rows_without_a_message_are_converted_from_their_payload(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.db"
    store = ExperimentStore(Database(path))
    new = _new("exp-o1-0000000000000002")
    await store.insert(new, StateEvent(ExperimentState.QUEUED))
    await store.submit_commit(new.id, EVERY_KIND)
    stored = await store.aresponse_page(new.id, 0, 100)
    archived = await _archived_events(store, new.id)

    _forget_messages(path)
    converted = await store.aresponse_page(new.id, 0, 100)
    archived_again = await _archived_events(store, new.id)
    await store.aclose()

    assert converted == stored
    assert archived_again == archived
    assert [Response(event=experiment_pb2.ExperimentEvent.FromString(m)) for _, m in archived] == [
        Response.FromString(r) for r in stored.events
    ]


async def test_an_event_that_cannot_be_serialized_fails_only_its_own_commit(
    tmp_path: Path,
) -> None:
    # A model server is hostile: text with a lone surrogate is valid JSON but no protobuf
    # string. Its commit fails whole (nothing of it is stored, its experiment's sequence
    # does not move) and a commit of another experiment in the same batch is unharmed.
    store = ExperimentStore(Database(tmp_path / "orchestrator.db"))
    hostile, other = _new("exp-o1-0000000000000003"), _new("exp-o1-0000000000000004")
    await store.insert(hostile, StateEvent(ExperimentState.QUEUED))
    await store.insert(other, StateEvent(ExperimentState.QUEUED))

    refused = store.submit_commit(
        hostile.id,
        [LogEvent(LogLevel.INFO, "fine"), OutputEvent(0, 0, "a\ud800b")],
        ExperimentChanges(state=ExperimentState.RUNNING),
    )
    accepted = store.submit_commit(other.id, [LogEvent(LogLevel.INFO, "fine")])
    results = await asyncio.gather(refused, accepted, return_exceptions=True)

    assert isinstance(results[0], UnicodeEncodeError)
    assert [e.sequence for e in store.events_after(hostile.id, 0, 100)] == [1]
    record = store.get(hostile.id)
    assert record is not None
    assert (record.state, record.last_sequence) == (ExperimentState.QUEUED, 1)
    assert [e.sequence for e in store.events_after(other.id, 0, 100)] == [1, 2]
    await store.aclose()


async def test_a_response_longer_than_a_one_byte_length_is_framed_whole(tmp_path: Path) -> None:
    store = ExperimentStore(Database(tmp_path / "orchestrator.db"))
    new = _new("exp-o1-0000000000000005")
    await store.insert(new, StateEvent(ExperimentState.QUEUED))
    # Lengths whose varint takes 1, 2 and 3 bytes; text that looks like protobuf fields.
    texts = ["\n\x08" * 40, "y" * 200, "\x12\xff" * 20_000]
    await store.submit_commit(new.id, [OutputEvent(0, 0, text) for text in texts])

    page = await store.aresponse_page(new.id, 1, 100)
    await store.aclose()

    assert [Response.FromString(r).event.output.text for r in page.events] == texts


async def _streamed(
    handlers: ExperimentHandlers, experiment_id: str, after: int = 0, *, follow: bool = False
) -> list[bytes]:
    request = requests_pb2.StreamExperimentEventsRequest(
        experiment_id=experiment_id, after_sequence=after, follow=follow
    )
    return [bytes(r) async for r in each_response(handlers.StreamExperimentEvents(request, CTX))]


async def _start(path: Path, sandbox: SubprocessSandbox) -> tuple[ExperimentEngine, Database]:
    db = Database(path)
    engine = ExperimentEngine(db, ExperimentSettings(), sandbox, "o1")
    await engine.start()
    return engine, db


async def test_an_old_database_upgrades_in_place_and_streams_the_same_bytes(
    tmp_path: Path, sandbox: SubprocessSandbox
) -> None:
    path = tmp_path / "orchestrator.db"
    engine, db = await _start(path, sandbox)
    try:
        handlers = ExperimentHandlers(engine)
        spec = make_spec([f"prompt {index}" for index in range(8)])
        created = await handlers.CreateExperiment(create_request(sandbox.create(), spec), CTX)
        experiment_id = created.experiment.id
        record = await wait_final(engine, experiment_id)
        fresh = await _streamed(handlers, experiment_id)
        followed = await _streamed(handlers, experiment_id, follow=True)
        stored = engine.store.events_after(experiment_id, 0, 10_000)
    finally:
        await engine.stop()
        db.close()
    assert len(fresh) == record.last_sequence == len(stored)
    assert fresh == followed == [_expected(e) for e in stored]

    _downgrade(path)
    engine, db = await _start(path, sandbox)  # migrates the old file in place
    try:
        handlers = ExperimentHandlers(engine)
        assert db.query("SELECT COUNT(*) FROM exp_events WHERE message IS NOT NULL")[0][0] == 0
        assert await _streamed(handlers, experiment_id) == fresh
        assert await _streamed(handlers, experiment_id, follow=True) == fresh
        assert await _streamed(handlers, experiment_id, 5) == fresh[5:]
        assert await _streamed(handlers, experiment_id, len(fresh)) == []

        # What the upgraded database commits from now on has its message stored.
        again = await handlers.CreateExperiment(create_request(sandbox.create(), spec), CTX)
        await wait_final(engine, again.experiment.id)
        new_rows = db.query(
            "SELECT COUNT(*) FROM exp_events WHERE experiment_id = ? AND message IS NULL",
            (again.experiment.id,),
        )
        assert new_rows[0][0] == 0
        assert [
            Response.FromString(r).event.sequence
            for r in await _streamed(handlers, again.experiment.id)
        ] == list(range(1, len(fresh) + 1))
    finally:
        await engine.stop()
        db.close()


@pytest.mark.parametrize("follow", [False, True])
async def test_a_stream_mixing_old_and_new_rows_is_one_gapless_sequence(
    tmp_path: Path, sandbox: SubprocessSandbox, follow: bool
) -> None:
    path = tmp_path / "orchestrator.db"
    engine, db = await _start(path, sandbox)
    try:
        handlers = ExperimentHandlers(engine)
        spec = make_spec([f"prompt {index}" for index in range(4)])
        created = await handlers.CreateExperiment(create_request(sandbox.create(), spec), CTX)
        experiment_id = created.experiment.id
        await wait_final(engine, experiment_id)
        fresh = await _streamed(handlers, experiment_id, follow=follow)
        _forget_messages(path, "sequence % 2 = 0")  # every other row as if written before
        assert await _streamed(handlers, experiment_id, follow=follow) == fresh
    finally:
        await engine.stop()
        db.close()
