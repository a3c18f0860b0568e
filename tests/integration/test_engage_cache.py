"""Engage keeps recently written profile states decoded between batches: the answers are
those of reading every state from the file, and a rolled back batch leaves nothing behind."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdpd.engage import catalog
from cdpd.engage.catalog import Source
from cdpd.engage.inputs import ProfileMessage
from cdpd.engage.store import EngageStore
from cdpd.engage.tables import Tables, create
from cdpd.model.timestamps import format_ms, parse_ms

T0 = parse_ms("2026-03-01T12:30:00Z")
HOUR = 3_600_000
SOURCES = [
    Source(key="buyers", kind="audience", query="event('Order').within(2 days).count() >= 1"),
    Source(key="orders", kind="computed_trait", query="event('Order').count()"),
    Source(key="big", kind="audience", query="trait('orders') >= 2 AND trait('plan') = 'pro'"),
    Source(key="views", kind="computed_trait", query="event('View').within(1 days).count()"),
]
PROFILES = ["p1", "p2", "p3", "p4"]
STEPS = st.one_of(
    st.tuples(
        st.just("apply"),
        st.lists(
            st.tuples(
                st.sampled_from(PROFILES),
                st.sampled_from(["Order", "View", "identify"]),
                st.integers(0, 72),
            ),
            min_size=1,
            max_size=5,
        ),
    ),
    st.tuples(st.just("merge"), st.sampled_from(PROFILES), st.sampled_from(PROFILES)),
    st.tuples(st.just("forget"), st.sampled_from(PROFILES)),
    st.tuples(st.just("recheck"), st.integers(1, 72)),
)


def message(profile_id: str, kind: str, hours_ago: int) -> dict[str, Any]:
    at = format_ms(T0 - hours_ago * HOUR)
    if kind == "identify":
        return {"type": "identify", "userId": profile_id, "traits": {"plan": "pro"}}
    return {"type": "track", "event": kind, "userId": profile_id, "timestamp": at}


@pytest.fixture
def two_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def open_tables(path: Path, cached_profiles: int) -> Tables:
    conn = sqlite3.connect(path, isolation_level=None)
    create(conn, str(path))
    tables = Tables(conn, cached_profiles=cached_profiles)
    tables.register(SOURCES, T0)
    tables.catalog = catalog.build(SOURCES)
    return tables


def run(tables: Tables, step: tuple[Any, ...], now_ms: int) -> list[Any]:
    if step[0] == "apply":
        inputs = [(p, message(p, kind, ago), "web") for p, kind, ago in step[1]]
        return tables.apply_many(inputs, now_ms)
    if step[0] == "merge":
        return tables.merge(step[1], step[2], now_ms)
    if step[0] == "forget":
        tables.forget(step[1])
        return []
    return tables.recheck_due(now_ms + step[1] * HOUR, 100)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(STEPS, min_size=1, max_size=12))
def test_cached_states_give_the_answers_of_reading_the_file(
    two_files: Path, steps: list[tuple[Any, ...]]
) -> None:
    for old in two_files.iterdir():
        old.unlink()
    uncached = open_tables(two_files / "uncached.sqlite3", cached_profiles=0)
    cached = open_tables(two_files / "cached.sqlite3", cached_profiles=2)
    try:
        for step in steps:
            assert run(cached, step, T0) == run(uncached, step, T0), step
        for profile_id in PROFILES:
            assert cached.values(profile_id, "users") == uncached.values(profile_id, "users")
            assert cached.profile(profile_id) == uncached.profile(profile_id)
    finally:
        uncached.conn.close()
        cached.conn.close()


async def test_a_rolled_back_batch_leaves_no_cached_state(tmp_path: Path) -> None:
    store = await EngageStore.open(tmp_path / "engage.sqlite3")
    try:
        await store.register(SOURCES, T0)
        store.use(catalog.build(SOURCES))
        await store.apply("p1", message("p1", "Order", 0), T0)
        failing = [ProfileMessage("p1", message("p1", "Order", 0), "web")]
        with pytest.raises(sqlite3.IntegrityError):  # a NULL position fails the commit
            await store.process(failing, T0, position={"resolutions": None})  # type: ignore[dict-item]
        recorded = await store.apply("p1", message("p1", "Order", 0), T0)
        assert [(r.change.key, r.change.value, r.change.previous) for r in recorded] == [
            ("orders", 2, 1)
        ]
    finally:
        await store.close()
