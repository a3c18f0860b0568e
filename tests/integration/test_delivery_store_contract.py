"""The DeliveryStore contract: what delivery needs of its storage, in messages and outcomes.

Every backend runs this one suite (the `backend` fixture is parametrised by backend): the SQLite
outbox, with messages appended through the real outbox writer, and the JetStream cluster
(cdpd/cluster/store.py, the store the cluster's lanes read and record through), with messages
appended through the cluster's ingest on a real three-server cluster.

A lane reads through a `LaneReader` and records through `record`. On SQLite a position moves in
the same transaction as its effects; on JetStream the consumer is the position and `record`
acks, nak's or buries the messages the node holds, so what a case reads it reads before it
records, and a position is checked once JetStream has applied the acks (`eventually`). One case
is about SQLite's positions alone (finished ranges kept beyond the position): a shared
consumer's ack floor is the only position JetStream lets every node read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cdpd import config as cdpd_config
from cdpd.clock import SystemClock
from cdpd.cluster import connect
from cdpd.cluster.ingest import JetStreamAppender
from cdpd.cluster.layout import Layout
from cdpd.cluster.publish import Publisher
from cdpd.cluster.store import JetStreamDeliveryStore
from cdpd.delivery.store import (
    DeliveryStore,
    LaneReader,
    Outcome,
    Owed,
    Parked,
    Recording,
    RoutingRule,
    SqliteDeliveryStore,
    lane_consumer,
)
from cdpd.model.rows import OutboxRow
from cdpd.model.timestamps import format_ms, now_ms
from cdpd.outbox import schema
from cdpd.outbox.writer import OutboxWriter
from tests.cluster_support import outbox_row

AT = "2030-01-01T00:00:00.000Z"
LATER = "2030-01-01T01:00:00.000Z"
RULE = RoutingRule("hook", catalog_name="Webhooks")
ORDERED = RoutingRule("hook", catalog_name="Webhooks", ordered=True)


@dataclass
class Backend:
    name: str
    store: DeliveryStore
    append: Callable[..., Awaitable[None]]
    end: Callable[[], int]


def _rows(messages: tuple[dict[str, Any], ...]) -> list[OutboxRow]:
    return [outbox_row(m) for m in messages]


@pytest.fixture(params=["sqlite", "jetstream"])
def servers(request: pytest.FixtureRequest) -> list[str]:
    """The JetStream cluster's servers (a fresh cluster), or none for the SQLite backend."""
    if request.param == "jetstream":
        return list(request.getfixturevalue("js_cluster").urls)
    return []


@pytest.fixture
async def backend(servers: list[str], tmp_path: Path) -> AsyncIterator[Backend]:
    opened = _jetstream(servers) if servers else _sqlite(tmp_path / "outbox.sqlite3")
    async with opened as found:
        yield found


CONFIG = """
[storage]
backend = "jetstream"
[storage.jetstream]
servers = {servers}
ack_wait_s = 5
[[sources]]
name = "website"
write_key = "wk"
[[destinations]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:9/hook"
[[destinations]]
name = "other"
type = "webhook"
url = "http://127.0.0.1:9/other"
[[destinations]]
name = "off"
type = "webhook"
url = "http://127.0.0.1:9/off"
enabled = false
"""


@asynccontextmanager
async def _jetstream(servers: list[str]) -> AsyncIterator[Backend]:
    config = cdpd_config.parse(CONFIG.format(servers=msgspec.json.encode(servers).decode()))
    jetstream = config.storage.jetstream
    layout = Layout.of(jetstream)
    async with connect.connected(jetstream, name="contract") as client:
        js = client.jetstream()
        await connect.ensure(js, jetstream, layout)
        await connect.ensure_dedup(js, jetstream, layout, 3600)
        publisher = Publisher(client)
        await publisher.start()
        # A dedup window beyond JetStream's own: markers (with each message's sequence) on.
        appender = JetStreamAppender(client, publisher, layout, dedup_window_s=3600)
        last = [0]

        async def append(*messages: dict[str, Any]) -> None:
            await appender.append(_rows(messages), [], now_ms())
            last[0] = (await js.stream_info(layout.stream)).state.last_seq

        store = JetStreamDeliveryStore(
            js,
            layout,
            config.destinations,
            clock=SystemClock(),
            ack_wait_s=jetstream.ack_wait_s,
            sources=["website"],
            fetch_wait_s=0.3,
        )
        yield Backend("jetstream", store, append, lambda: last[0])


@asynccontextmanager
async def _sqlite(path: Path) -> AsyncIterator[Backend]:
    async with schema.connect(path) as conn:
        writer = OutboxWriter(
            conn, commit_max_rows=1000, dedup_window_s=0, full_retry_after_s=1, clock_s=lambda: 0
        )
        await writer.start()
        task = asyncio.create_task(writer.run())

        async def append(*messages: dict[str, Any]) -> None:
            await writer.append(_rows(messages), [], now_ms())

        try:
            yield Backend(
                "sqlite",
                SqliteDeliveryStore(writer.transact, path),
                append,
                lambda: writer.last_seq,
            )
        finally:
            writer.close()
            await task


def track(n: int, user: str = "u1", **extra: str) -> dict[str, Any]:
    return {"type": "track", "event": "E", "userId": user, "messageId": f"m{n}", **extra}


def failed(seq: int, state: str = "retrying", **changes: object) -> Outcome:
    outcome = Outcome(
        seq=seq,
        message_id=f"m{seq}",
        order_key="u1",
        attempt=1,
        started_at=AT,
        duration_ms=1.0,
        status=503,
        error="HTTP 503",
        state=state,
        first_attempt_at=AT,
        next_attempt_at=AT,
        finished_at=None if state == "retrying" else AT,
        origin="stream",
    )
    return msgspec.structs.replace(outcome, **changes)


def delivered(seq: int) -> Outcome:
    return failed(seq, "delivered", status=200, error=None)


def now_at(plus_s: float = 0) -> str:
    return format_ms(now_ms() + round(plus_s * 1000))


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 30) -> Any:
    """What `check` returns once it is truthy: JetStream applies acks and hands messages back
    asynchronously (SQLite at once)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await check()
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def read_all(backend: Backend, reader: LaneReader, after_seq: int = 0) -> list[Owed]:
    return await reader.new_messages(after_seq, backend.end(), 100)


async def test_a_new_destination_starts_at_the_end_and_a_known_one_keeps_its_place(
    backend: Backend,
) -> None:
    await backend.append(track(1), track(2))
    positions = await backend.store.start(["hook"], ["off"], backend.end(), AT)
    assert positions[lane_consumer("hook")].seq == 2
    assert positions[lane_consumer("off")].paused
    await backend.append(track(3), track(4))
    reader = await backend.store.reader(RULE)
    try:
        assert [o.view.message_id for o in await reader.new_messages(2, backend.end(), 1)] == ["m3"]
        await backend.store.record(
            Recording("hook", outcomes=[delivered(3)], progress={lane_consumer("hook"): (3, [])})
        )

        async def hook_at_3() -> bool:
            return (await reader.positions())[lane_consumer("hook")].seq == 3

        assert await eventually(hook_at_3)
    finally:
        await reader.close()
    positions = await backend.store.start(["hook"], [], backend.end(), AT)
    assert positions[lane_consumer("hook")].seq == 3  # not the end (4): its place
    assert lane_consumer("off") not in positions  # no longer configured: forgotten


async def test_new_messages_are_read_in_order_and_filtered(backend: Backend) -> None:
    await backend.store.start(["hook"], [], backend.end(), AT)
    await backend.append(track(1), {**track(2), "integrations": {"All": False}}, track(3))
    reader = await backend.store.reader(RULE)
    try:
        assert [o.view.message_id for o in await read_all(backend, reader)] == ["m1", "m3"]
        assert await read_all(backend, reader, after_seq=3) == []
        await backend.append(track(4), track(5))
        assert [o.view.message_id for o in await reader.new_messages(3, backend.end(), 1)] == ["m4"]
    finally:
        await reader.close()


async def test_failures_enter_the_ledger_and_come_back_when_due(backend: Backend) -> None:
    await backend.store.start(["hook"], [], backend.end(), AT)
    await backend.append(track(1), track(2))
    soon = now_at(1.0)
    reader = await backend.store.reader(RULE)
    try:
        assert len(await read_all(backend, reader)) == 2
        await backend.store.record(
            Recording(
                "hook",
                outcomes=[failed(1, next_attempt_at=soon), failed(2, "dead", error="HTTP 400")],
                progress={lane_consumer("hook"): (2, [])},
                at=now_at(),
            )
        )
        assert await reader.due(now_at(), 10) == []
        assert await reader.next_due_at() == soon

        async def due() -> list[Owed]:
            assert await read_all(backend, reader, after_seq=2) == []
            return await reader.due(now_at(), 10)

        found = await eventually(due)
        assert [(o.view.seq, o.view.attempts, o.from_ledger) for o in found] == [(1, 1, True)]
    finally:
        await reader.close()
    assert [d.message_id for d in await backend.store.dead("hook", 10)] == ["m2"]
    assert (await backend.store.counts())["hook"]["retrying"] == 1
    assert await backend.store.retry_now("hook", now_at()) == 1


async def test_a_retry_that_succeeds_keeps_its_history(backend: Backend) -> None:
    await backend.store.start(["hook"], [], backend.end(), AT)
    await backend.append(track(1))
    reader = await backend.store.reader(RULE)
    try:
        assert len(await read_all(backend, reader)) == 1
        await backend.store.record(
            Recording("hook", outcomes=[failed(1, next_attempt_at=now_at(60))], at=now_at())
        )
        success = failed(1, "delivered", attempt=2, status=200, error=None, origin="ledger")
        await backend.store.record(Recording("hook", outcomes=[success], at=LATER))
    finally:
        await reader.close()
    (status,) = await backend.store.show("m1", [RULE])
    assert (status.state, status.attempts) == ("delivered", 2)
    assert [a.status for a in status.history] == [503, 200]


async def test_a_first_attempt_success_leaves_no_row_but_shows_as_delivered(
    backend: Backend,
) -> None:
    await backend.store.start(["hook"], [], backend.end(), AT)
    await backend.append(track(1), track(2))
    reader = await backend.store.reader(RULE)
    try:
        assert len(await reader.new_messages(0, backend.end(), 1)) == 1
        await backend.store.record(
            Recording("hook", outcomes=[delivered(1)], progress={lane_consumer("hook"): (1, [])})
        )
    finally:
        await reader.close()
    assert await backend.store.counts() == {}

    async def shown() -> list[tuple[str, int]]:
        found = [(s.state, s.attempts) for s in await backend.store.show("m1", [RULE])]
        return found if found == [("delivered", 1)] else []

    assert await eventually(shown) == [("delivered", 1)]
    assert [s.state for s in await backend.store.show("m2", [RULE])] == ["not_reached"]
    assert await backend.store.show("nothing-like-it", [RULE]) == []


async def test_finished_ranges_beyond_the_position_are_kept(backend: Backend) -> None:
    if backend.name != "sqlite":
        pytest.skip(
            "SQLite positions only: a message acked beyond a JetStream consumer's ack floor"
            " cannot be read back (the floor is the position every node can read)"
        )
    await backend.append(*[track(n) for n in range(1, 7)])
    await backend.store.start(["hook"], [], 0, AT)
    await backend.store.record(
        Recording("hook", progress={lane_consumer("hook"): (2, [(5, 6)])}, at=AT)
    )
    assert [s.state for s in await backend.store.show("m5", [RULE])] == ["delivered"]
    assert [s.state for s in await backend.store.show("m3", [RULE])] == ["not_reached"]


async def test_parked_messages_wait_for_the_oldest_of_their_user(backend: Backend) -> None:
    await backend.store.start(["hook"], [], backend.end(), AT)
    await backend.append(track(1), track(2), track(3, user="u2"))
    lane = await backend.store.reader(RULE)
    try:
        assert len(await read_all(backend, lane)) == 3
        await backend.store.record(
            Recording(
                "hook",
                outcomes=[failed(1, next_attempt_at=now_at(60))],
                parked=[Parked(2, "m2", "u1"), Parked(3, "m3", "u2")],
                at=now_at(),
            )
        )
    finally:
        await lane.close()
    reader = await backend.store.reader(ORDERED)
    try:

        async def due() -> list[int]:
            await read_all(backend, reader, after_seq=3)
            return [o.view.seq for o in await reader.due(now_at(), 10)]

        assert await eventually(due) == [3]  # m2 waits behind m1
        assert (await reader.unfinished_keys()) == {"u1": 2, "u2": 1}
    finally:
        await reader.close()


async def test_replay_dead_and_replay_jobs(backend: Backend) -> None:
    await backend.store.start(["hook"], [], backend.end(), AT)
    await backend.append(*[track(n, receivedAt=f"2030-01-0{n}T00:00:00.000Z") for n in (1, 2, 3)])
    reader = await backend.store.reader(RULE)
    try:
        assert len(await read_all(backend, reader)) == 3
        await backend.store.record(
            Recording(
                "hook",
                outcomes=[delivered(1), delivered(2), failed(3, "dead")],
                progress={lane_consumer("hook"): (3, [])},
                at=now_at(),
            )
        )

        async def passed_all() -> bool:
            return (await reader.positions())[lane_consumer("hook")].seq == 3

        assert await eventually(passed_all)
    finally:
        await reader.close()
    assert await backend.store.replay_dead("hook", AT) == 1
    job_id, count = await backend.store.replay_range(
        RULE, "2030-01-02T00:00:00.000Z", "2030-01-09T00:00:00.000Z", None, AT
    )
    assert count == 1  # m2 (m3 waits in the ledger already)
    # A restart keeps the job of a destination still configured, and ends one that is not.
    await backend.store.start(["hook"], [], backend.end(), AT)
    reader = await backend.store.reader(RULE)
    try:
        (job,) = await reader.replay_jobs()
        assert job.id == job_id
        owed = await reader.replay_messages(job, job.first_seq - 1, 10)
        assert [o.view.message_id for o in owed] == ["m2"]
    finally:
        await reader.close()
    await backend.store.record(Recording("hook", finished_jobs=[job_id], at=AT))
    await backend.store.replay_range(RULE, AT, LATER, None, AT)
    await backend.store.start(["other"], [], backend.end(), AT)
    reader = await backend.store.reader(RULE)
    try:
        assert await reader.replay_jobs() == []
        assert list(await reader.positions()) == ["delivery:other"]
    finally:
        await reader.close()


async def test_expire_gives_up_what_waited_its_whole_window(backend: Backend) -> None:
    await backend.store.start(["hook"], [], backend.end(), AT)
    await backend.append(track(1))
    reader = await backend.store.reader(RULE)
    try:
        assert len(await read_all(backend, reader)) == 1
        await backend.store.record(
            Recording("hook", outcomes=[failed(1, next_attempt_at=now_at(60))], at=now_at())
        )
    finally:
        await reader.close()
    assert await backend.store.expire("hook", RULE, LATER, LATER) == 1
    (status,) = await backend.store.show("m1", [RULE])
    assert status.state == "dead"
    assert "unreachable for the whole retry window" in (status.last_error or "")
