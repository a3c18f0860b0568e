"""Engage's SQLite store on a real file: apply, merge, forget, windows rolling forward with a
fake clock, account audiences, restart without repeated changes, and preview."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cdpd.engage import catalog
from cdpd.engage.catalog import Change, Source
from cdpd.engage.evaluation import Ctx
from cdpd.engage.inputs import ProfileDeleted, ProfileMessage, ProfilesMerged
from cdpd.engage.plan import compile_query
from cdpd.engage.preview import preview
from cdpd.engage.store import EngageStore
from cdpd.model.timestamps import format_ms, parse_ms

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = parse_ms("2026-03-01T12:30:00Z")
DEFINITIONS = [
    Source(
        key="recent_buyers",
        kind="audience",
        query="event('Order Completed').within(7 days).count() >= 1",
    ),
    Source(key="order_count", kind="computed_trait", query="event('Order Completed').count()"),
    Source(key="admins", kind="audience", query="ANY trait('role') = 'admin'"),
]


def track(event: str, at_ms: int, user: str = "u1", **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": event,
        "userId": user,
        "properties": properties,
        "timestamp": format_ms(at_ms),
    }


async def open_store(path: Path, sources: list[Source] = DEFINITIONS) -> EngageStore:
    store = await EngageStore.open(path)
    await store.register(sources, T0)
    store.use(catalog.build(sources))
    return store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EngageStore]:
    opened = await open_store(tmp_path / "engage.sqlite3")
    yield opened
    await opened.close()


def changes(recorded: list[Any]) -> list[tuple[str, Change]]:
    return [(r.id, r.change) for r in recorded]


async def test_apply_records_entries_values_and_changes(store: EngageStore) -> None:
    recorded = await store.apply("p1", track("Order Completed", T0), T0)
    assert changes(recorded) == [
        ("p1", Change("recent_buyers", "audience", "entered", True, False)),
        ("p1", Change("order_count", "computed_trait", "computed", 1, None)),
    ]
    assert recorded[0].seq < recorded[1].seq
    assert await store.values("p1") == {"recent_buyers": True, "order_count": 1}
    again = await store.apply("p1", track("Order Completed", T0), T0)
    assert changes(again) == [("p1", Change("order_count", "computed_trait", "computed", 2, 1))]


async def test_window_expiry_exits_without_a_new_event(store: EngageStore) -> None:
    await store.apply("p1", track("Order Completed", T0), T0)
    assert await store.recheck_due(T0 + 6 * DAY) == []
    exit_at = (T0 // HOUR + 7 * 24) * HOUR
    assert await store.recheck_due(exit_at - 1) == []
    exited = await store.recheck_due(exit_at)
    assert changes(exited) == [("p1", Change("recent_buyers", "audience", "exited", False, True))]
    assert await store.values("p1") == {"order_count": 1}
    assert await store.recheck_due(exit_at + DAY) == []  # nothing left to expire


async def test_merge_keeps_both_and_records_only_real_changes(store: EngageStore) -> None:
    await store.apply("p1", track("Order Completed", T0 - 10 * DAY), T0)
    await store.apply("p2", track("Order Completed", T0, user="u2"), T0)
    merged = await store.merge("p2", "p1", T0)
    # p2 was a recent buyer: the merged profile still is, so no entry is recorded again.
    assert changes(merged) == [("p1", Change("order_count", "computed_trait", "computed", 2, 1))]
    assert await store.values("p1") == {"recent_buyers": True, "order_count": 2}
    assert await store.values("p2") == {}
    assert await store.profile("p2") is None
    state = await store.profile("p1")
    assert state is not None
    assert state.identifiers["user_id"] == ["u1", "u2"]


async def test_forget_removes_everything_silently(store: EngageStore) -> None:
    await store.apply("p1", track("Order Completed", T0), T0)
    await store.forget("p1")
    assert await store.profile("p1") is None
    assert await store.values("p1") == {}
    assert await store.recheck_due(T0 + 30 * DAY) == []


async def test_account_audience_follows_its_users(store: EngageStore) -> None:
    group = {"type": "group", "userId": "u1", "groupId": "acme", "traits": {"name": "Acme"}}
    assert changes(await store.apply("p1", group, T0)) == []
    promoted = {"type": "identify", "userId": "u1", "traits": {"role": "admin"}}
    recorded = await store.apply("p1", promoted, T0)
    assert [(r.collection, r.id, r.change.change) for r in recorded] == [
        ("accounts", "acme", "entered")
    ]
    assert await store.values("acme", "accounts") == {"admins": True}


async def test_a_restart_does_not_record_entries_twice(tmp_path: Path) -> None:
    path = tmp_path / "engage.sqlite3"
    first = await open_store(path)
    await first.apply("p1", track("Order Completed", T0), T0)
    await first.close()
    second = await open_store(path)
    try:
        assert await second.recompute_all(T0 + HOUR) == []
        assert changes(await second.apply("p1", track("Order Completed", T0), T0)) == [
            ("p1", Change("order_count", "computed_trait", "computed", 2, 1))
        ]
        summary = await second.summary("recent_buyers")
        assert summary is not None
        assert (summary.size, summary.entries, summary.exits) == (1, 1, 0)
        assert summary.computed_at_ms == T0 + HOUR
    finally:
        await second.close()


async def test_a_definition_without_history_counts_from_its_creation(tmp_path: Path) -> None:
    path = tmp_path / "engage.sqlite3"
    source = Source(
        key="new_buyers", kind="audience", query="event('Order Completed').count() >= 1"
    )
    store = await EngageStore.open(path)
    try:
        created = await store.register([source], T0)
        assert created == {"new_buyers": T0}
        assert await store.register([source], T0 + DAY) == {"new_buyers": T0}  # kept
        since = msgspec_replace(source, since_ms=created["new_buyers"])
        store.use(catalog.build([since]))
        assert changes(await store.apply("p1", track("Order Completed", T0 - HOUR), T0)) == []
        assert [
            r.change.change
            for r in await store.apply("p1", track("Order Completed", T0 + HOUR), T0 + HOUR)
        ] == ["entered"]
    finally:
        await store.close()


def msgspec_replace(source: Source, **changes: Any) -> Source:
    return msgspec.structs.replace(source, **changes)


async def test_the_tables_are_documented_names(store: EngageStore) -> None:
    await store.apply("p1", track("Order Completed", T0), T0)
    conn = sqlite3.connect(store.path)
    try:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        assert {
            "engage_definitions",
            "engage_profiles",
            "engage_accounts",
            "engage_links",
            "engage_buckets",
            "engage_values",
            "engage_changes",
            "engage_position",
            "engage_sizes",
            "engage_change_days",
        } <= tables
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
        assert conn.execute(
            "SELECT collection, key, id, value FROM engage_values ORDER BY key"
        ).fetchall() == [
            ("users", "order_count", "p1", "1"),
            ("users", "recent_buyers", "p1", "true"),
        ]
    finally:
        conn.close()


async def test_preview_counts_without_saving(store: EngageStore) -> None:
    for n in range(10):
        await store.apply(f"p{n}", track("Order Completed", T0 - n * DAY, user=f"u{n}"), T0)
    await store.apply("p0", {"type": "identify", "userId": "u0", "traits": {"plan": "pro"}}, T0)
    await store.apply("p10", {"type": "identify", "userId": "u10", "traits": {"plan": "pro"}}, T0)
    kept = store.catalog

    def count(query: str) -> tuple[int, int, tuple[str, ...]]:
        result = preview(store.path, compile_query(query), kept, T0)
        return result.matching, result.profiles, result.unkept_events

    recent = "event('Order Completed').within(7 days).count() >= 1"
    assert count(recent) == (7, 11, ())
    # Profiles without any such event (p10) are counted by one evaluation.
    assert count(f"NOT {recent}") == (4, 11, ())
    assert count(f"{recent} AND trait('plan') = 'pro'") == (1, 11, ())
    assert count("trait('order_count') >= 1 AND trait('plan') = 'pro'") == (1, 11, ())
    assert count("event('Signed Up').count() >= 1") == (0, 11, ("event('Signed Up')",))
    assert count("event('Signed Up').count() = 0") == (11, 11, ("event('Signed Up')",))
    assert count("ANY trait('plan') = 'pro'") == (0, 0, ())
    summary = await store.summary("recent_buyers")
    assert summary is not None
    assert summary.size == 7  # nothing was saved by the previews


async def test_preview_reads_only_the_traits_it_needs_with_the_same_answer(
    store: EngageStore,
) -> None:
    """A preview decodes only the keys a query reads; its answer is what evaluating each
    profile's whole state gives (nested paths, keys that are not names, a definition's value
    read through trait(), a missing value)."""
    traits = [
        {"plan": "pro", "address": {"city": "Oslo"}, "a key": {"x": 3}},
        {"plan": "free", "address": {"city": "Rome"}},
        {"plan": "pro", "a key": {"x": 1}, "order_count": 9},
        {},
    ]
    for n, given in enumerate(traits):
        message = {"type": "identify", "userId": f"u{n}", "traits": given}
        await store.apply(f"p{n}", message, T0)
    await store.apply("p2", track("Order Completed", T0, user="u2"), T0)
    kept = store.catalog
    queries = [
        "trait('address.city') = 'Oslo'",
        "trait('a key.x') >= 2 OR trait('plan') = 'free'",
        "trait('order_count') >= 1",
        "trait('plan').absent()",
        "NOT trait('address').exists() AND trait('order_count') = 0",
    ]
    answers: list[int] = []
    states = {f"p{n}": await store.profile(f"p{n}") for n in range(len(traits))}
    for query in queries:
        plan = compile_query(query)
        expected = sum(
            bool(plan.evaluate(Ctx(state, T0, dict(state.values))))
            for state in states.values()
            if state is not None
        )
        result = preview(store.path, plan, kept, T0)
        assert (result.matching, result.profiles) == (expected, 4), query
        answers.append(expected)
    assert answers == [1, 2, 1, 1, 1]


async def test_process_takes_the_identity_stages_output_in_order(store: EngageStore) -> None:
    recorded = await store.process(
        [
            ProfileMessage("p1", track("Order Completed", T0)),
            ProfileMessage("p2", track("Order Completed", T0, user="u2")),
            ProfilesMerged(from_profile="p2", into_profile="p1"),
            ProfileMessage("p1", track("Order Completed", T0)),
            ProfileMessage("p3", track("Order Completed", T0, user="u3")),
            ProfileDeleted("p3"),
        ],
        T0,
    )
    assert [(r.id, r.change.key, r.change.value) for r in recorded] == [
        ("p1", "recent_buyers", True),
        ("p1", "order_count", 1),
        ("p2", "recent_buyers", True),
        ("p2", "order_count", 1),
        ("p1", "order_count", 2),
        ("p1", "order_count", 3),
        ("p3", "recent_buyers", True),
        ("p3", "order_count", 1),
    ]
    assert await store.values("p1") == {"recent_buyers": True, "order_count": 3}
    assert await store.profile("p3") is None
    assert await store.profile("p2") is None


async def test_first_sync_sends_every_member_then_only_changes(store: EngageStore) -> None:
    for n in range(5):
        await store.apply(f"p{n}", track("Order Completed", T0, user=f"u{n}"), T0)
    first = await store.sync_due("recent_buyers", "hook", limit=3)
    assert first.first_sync
    assert [(i.profile_id, i.change.change) for i in first.items] == [
        ("p0", "entered"),
        ("p1", "entered"),
        ("p2", "entered"),
    ]
    assert first.items[0].identifiers == {"user_id": ["u0"]}
    await store.mark_synced("recent_buyers", "hook", first.position, T0)
    rest = await store.sync_due("recent_buyers", "hook", limit=3)
    assert rest.first_sync
    assert [i.profile_id for i in rest.items] == ["p3", "p4"]
    await store.mark_synced("recent_buyers", "hook", rest.position, T0)
    assert (await store.sync_due("recent_buyers", "hook")).items == []
    # Later syncs: only what changed since.
    await store.apply("p5", track("Order Completed", T0, user="u5"), T0)
    await store.recheck_due(T0 + 8 * DAY)
    later = await store.sync_due("recent_buyers", "hook")
    assert not later.first_sync
    assert [(i.profile_id, i.change.change) for i in later.items] == [
        ("p5", "entered"),
        *[(f"p{n}", "exited") for n in range(6)],
    ]
    assert later.items[0].change_id.isdigit()
    # Another destination starts with its own first sync; a resync starts over.
    other = await store.sync_due("recent_buyers", "other")
    assert other.first_sync
    assert other.items == []  # nobody is a member any more
    assert await store.resync("recent_buyers", "hook") is True
    assert await store.resync("recent_buyers", "never") is False
    assert (await store.sync_due("recent_buyers", "hook")).first_sync


async def test_first_sync_of_a_computed_trait_sends_values(store: EngageStore) -> None:
    await store.apply("p1", track("Order Completed", T0), T0)
    await store.apply("p1", track("Order Completed", T0), T0)
    due = await store.sync_due("order_count", "hook")
    assert [(i.change.change, i.change.value) for i in due.items] == [("computed", 2)]
    assert due.items[0].change_id.startswith("first-")
