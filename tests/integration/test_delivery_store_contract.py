"""The DeliveryStore contract: what delivery needs of its storage, in messages and outcomes.

Every backend runs this one suite (the `store` fixture is parametrised by backend); the SQLite
outbox is the first. Messages are appended through the real outbox writer.

The JetStream backend does not implement `DeliveryStore`: its lanes read durable consumers, which
keep the positions, and JetStream's redelivery is the retry queue (docs/cluster-delivery.md).
Each case here has its counterpart in tests/integration/test_cluster_delivery.py, or is
SQLite-only because it is about rows the cluster does not keep:

- starts at the end / keeps its place: `test_a_new_destination_starts_at_the_end_...`;
- read in order and filtered: `test_two_nodes_share_the_work_...` and
  tests/unit/test_cluster_routing.py (the same cases through the SQL and the predicate);
- failures come back when due: `test_a_retryable_failure_comes_back_...`;
- a retry keeps its history: SQLite-only (the cluster keeps a delivery count, not attempts);
- a first-attempt success shows as delivered: SQLite-only (`deliveries show`);
- finished ranges beyond the position: SQLite-only (a consumer acks messages one by one);
- parked messages wait for the oldest of their user: `test_a_user_s_messages_arrive_in_order_...`;
- replay dead: `test_a_retryable_failure_...` (replay jobs by time are SQLite-only for now);
- expire after the retry window: `test_a_message_is_given_up_after_its_retry_window`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from cdpd.delivery.store import (
    DeliveryStore,
    Outcome,
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

AT = "2030-01-01T00:00:00.000Z"
LATER = "2030-01-01T01:00:00.000Z"
RULE = RoutingRule("hook", catalog_name="Webhooks")
ORDERED = RoutingRule("hook", catalog_name="Webhooks", ordered=True)


@dataclass
class Backend:
    store: DeliveryStore
    append: Callable[..., Awaitable[None]]
    end: Callable[[], int]


@pytest.fixture(params=["sqlite"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    path = tmp_path / "outbox.sqlite3"
    async with schema.connect(path) as conn:
        writer = OutboxWriter(
            conn, commit_max_rows=1000, dedup_window_s=0, full_retry_after_s=1, clock_s=lambda: 0
        )
        await writer.start()
        task = asyncio.create_task(writer.run())

        async def append(*messages: dict[str, str]) -> None:
            rows = [
                OutboxRow(
                    message_id=m["messageId"],
                    source="website",
                    type=m.get("type", "track"),
                    event=m.get("event"),
                    user_id=m.get("userId"),
                    anonymous_id=None,
                    received_at=m.get("receivedAt", format_ms(now_ms())),
                    payload=msgspec.json.encode(m).decode(),
                )
                for m in messages
            ]
            await writer.append(rows, [], now_ms())

        try:
            yield Backend(
                SqliteDeliveryStore(writer.transact, path), append, lambda: writer.last_seq
            )
        finally:
            writer.close()
            await task


def track(n: int, user: str = "u1", **extra: str) -> dict[str, str]:
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


async def test_a_new_destination_starts_at_the_end_and_a_known_one_keeps_its_place(
    backend: Backend,
) -> None:
    await backend.append(track(1), track(2))
    positions = await backend.store.start(["hook"], ["off"], backend.end(), AT)
    assert positions[lane_consumer("hook")].seq == 2
    assert positions[lane_consumer("off")].paused
    await backend.store.record(Recording("hook", progress={lane_consumer("hook"): (1, [])}, at=AT))
    await backend.append(track(3))
    positions = await backend.store.start(["hook"], [], backend.end(), AT)
    assert positions[lane_consumer("hook")].seq == 1
    assert lane_consumer("off") not in positions  # no longer configured: forgotten


async def test_new_messages_are_read_in_order_and_filtered(backend: Backend) -> None:
    await backend.append(track(1), {**track(2), "integrations": {"All": False}}, track(3))
    reader = await backend.store.reader(RULE)
    try:
        owed = await reader.new_messages(0, backend.end(), 10)
        assert [o.view.message_id for o in owed] == ["m1", "m3"]
        assert [o.view.message_id for o in await reader.new_messages(1, 3, 1)] == ["m3"]
        assert await reader.new_messages(3, 3, 10) == []
    finally:
        await reader.close()


async def test_failures_enter_the_ledger_and_come_back_when_due(backend: Backend) -> None:
    await backend.append(track(1), track(2))
    await backend.store.start(["hook"], [], 0, AT)
    await backend.store.record(
        Recording(
            "hook",
            outcomes=[failed(1, next_attempt_at=LATER), failed(2, "dead", error="HTTP 400")],
            progress={lane_consumer("hook"): (2, [])},
            at=AT,
        )
    )
    reader = await backend.store.reader(RULE)
    try:
        assert await reader.due(AT, 10) == []
        assert await reader.next_due_at() == LATER
        due = await reader.due(LATER, 10)
        assert [(o.view.seq, o.view.attempts, o.from_ledger) for o in due] == [(1, 1, True)]
        assert (await reader.positions())[lane_consumer("hook")].seq == 2
    finally:
        await reader.close()
    assert [d.message_id for d in await backend.store.dead("hook", 10)] == ["m2"]
    assert (await backend.store.counts())["hook"]["retrying"] == 1
    assert await backend.store.retry_now("hook", AT) == 1


async def test_a_retry_that_succeeds_keeps_its_history(backend: Backend) -> None:
    await backend.append(track(1))
    await backend.store.start(["hook"], [], 0, AT)
    await backend.store.record(Recording("hook", outcomes=[failed(1)], at=AT))
    success = failed(1, "delivered", attempt=2, status=200, error=None, origin="ledger")
    await backend.store.record(Recording("hook", outcomes=[success], at=LATER))
    (status,) = await backend.store.show("m1", [RULE])
    assert (status.state, status.attempts) == ("delivered", 2)
    assert [a.status for a in status.history] == [503, 200]


async def test_a_first_attempt_success_leaves_no_row_but_shows_as_delivered(
    backend: Backend,
) -> None:
    await backend.append(track(1), track(2))
    await backend.store.start(["hook"], [], 0, AT)
    ok = failed(1, "delivered", status=200, error=None)
    await backend.store.record(
        Recording("hook", outcomes=[ok], progress={lane_consumer("hook"): (1, [])}, at=AT)
    )
    assert await backend.store.counts() == {}
    assert [(s.state, s.attempts) for s in await backend.store.show("m1", [RULE])] == [
        ("delivered", 1)
    ]
    assert [s.state for s in await backend.store.show("m2", [RULE])] == ["not_reached"]


async def test_finished_ranges_beyond_the_position_are_kept(backend: Backend) -> None:
    await backend.append(*[track(n) for n in range(1, 7)])
    await backend.store.start(["hook"], [], 0, AT)
    await backend.store.record(
        Recording("hook", progress={lane_consumer("hook"): (2, [(5, 6)])}, at=AT)
    )
    assert [s.state for s in await backend.store.show("m5", [RULE])] == ["delivered"]
    assert [s.state for s in await backend.store.show("m3", [RULE])] == ["not_reached"]


async def test_parked_messages_wait_for_the_oldest_of_their_user(backend: Backend) -> None:
    await backend.append(track(1), track(2), track(3, user="u2"))
    await backend.store.start(["hook"], [], 0, AT)
    await backend.store.record(
        Recording(
            "hook",
            outcomes=[failed(1, next_attempt_at=LATER)],
            parked=[Parked(2, "m2", "u1"), Parked(3, "m3", "u2")],
            at=AT,
        )
    )
    reader = await backend.store.reader(ORDERED)
    try:
        assert [o.view.seq for o in await reader.due(AT, 10)] == [3]  # m2 waits behind m1
        assert (await reader.unfinished_keys()) == {"u1": 2, "u2": 1}
    finally:
        await reader.close()


async def test_replay_dead_and_replay_jobs(backend: Backend) -> None:
    await backend.append(*[track(n, receivedAt=f"2030-01-0{n}T00:00:00.000Z") for n in (1, 2, 3)])
    await backend.store.start(["hook"], [], backend.end(), AT)
    await backend.store.record(Recording("hook", outcomes=[failed(3, "dead")], at=AT))
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
    await backend.append(track(1))
    await backend.store.start(["hook"], [], 0, AT)
    await backend.store.record(Recording("hook", outcomes=[failed(1)], at=AT))
    assert await backend.store.expire("hook", RULE, LATER, LATER) == 1
    (status,) = await backend.store.show("m1", [RULE])
    assert status.state == "dead"
    assert "unreachable for the whole retry window" in (status.last_error or "")
