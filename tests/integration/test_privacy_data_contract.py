"""The Privacy page's data (`seams.PrivacyData`): the SQL the SQLite backend runs and the
filter, order and paging done in Python over a `PortalStore`'s listing (the JetStream
backend's way) answer the same, over the same real outbox. The cluster's own end-to-end case is
in tests/integration/test_cluster_console.py."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from cdpd.console.privacy_data import ListedPrivacy, OutboxPrivacy
from cdpd.outbox import schema
from cdpd.outbox.writer import OutboxWriter
from cdpd.privacy import store
from cdpd.privacy.endpoints import OutboxPortal
from cdpd.privacy.portal import Portal
from cdpd.privacy.settings import PrivacyConfig

AT = "2030-01-01T00:00:00.000Z"
SOURCES = ["website", "ios"]  # the workspace's; "backend" is another workspace's
NAMES = [
    "properties.email", "properties.Email", "properties.a_b", "properties.a%b", "properties.axb",
    "traits.phone", "context.ip", *(f"properties.f{n:02}" for n in range(30)),
]  # fmt: skip


def _seen(source: str, field: str, n: int) -> tuple[object, ...]:
    suggested = ("red", "yellow", "green", None)[n % 4]
    return (source, field, suggested, None, None, AT, AT, "x")


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[OutboxPrivacy, ListedPrivacy]]:
    path = tmp_path / "outbox.sqlite3"
    async with schema.connect(path) as conn, aiosqlite.connect(path) as reader:
        writer = OutboxWriter(
            conn, commit_max_rows=1000, dedup_window_s=0, full_retry_after_s=1, clock_s=lambda: 0
        )
        await writer.start()
        task = asyncio.create_task(writer.run())
        try:
            rows = [_seen("website", f, n) for n, f in enumerate(NAMES)]
            rows += [_seen("ios", f, n) for n, f in enumerate(NAMES[::3])]
            rows += [_seen("backend", f, n) for n, f in enumerate(["traits.ssn", *NAMES[:5]])]
            await writer.transact(functools.partial(store.upsert_inbox, rows))
            portal = OutboxPortal(writer, reader, Portal(PrivacyConfig()))
            for n, field in enumerate([*NAMES[::5], "traits.ssn"]):
                await portal.classify(field, ("red", "yellow", "green")[n % 3], AT, "test")
            yield OutboxPrivacy(reader, portal), ListedPrivacy(portal)
        finally:
            writer.close()
            await task


@pytest.mark.parametrize("containing", ["", "f0", "F0", "email", "a_b", "a%b", "%", "_", "zzz"])
@pytest.mark.parametrize("offset", [0, 5, 20, 200])
async def test_both_ways_give_the_same_pages(
    stores: tuple[OutboxPrivacy, ListedPrivacy], containing: str, offset: int
) -> None:
    by_sql, listed = stores
    for sources in (SOURCES, ["ios"], []):
        asked = {"inbox_from": offset, "inventory_from": offset // 2, "limit": 7}
        expected = await by_sql.tables(sources, containing, **asked)
        assert await listed.tables(sources, containing, **asked) == expected


async def test_what_they_are_compared_on_is_not_empty(
    stores: tuple[OutboxPrivacy, ListedPrivacy],
) -> None:
    full = await stores[0].tables(SOURCES, "", inbox_from=0, inventory_from=0, limit=100)
    assert full.inbox.total > 20
    assert full.inventory.total > 5
    assert "traits.ssn" not in {f.field for f in full.inventory.rows}  # another's field
    assert {f.suggested_class for f in full.inbox.rows} == {"red", "yellow", "green", None}
    searched = await stores[0].tables(SOURCES, "a_b", inbox_from=0, inventory_from=0, limit=100)
    assert [f.field for f in searched.inbox.rows + searched.inventory.rows] == ["properties.a_b"]


async def test_both_ways_classify_only_the_workspace_s_fields(
    stores: tuple[OutboxPrivacy, ListedPrivacy],
) -> None:
    by_sql, listed = stores
    for way in (by_sql, listed):
        assert not await way.classify("traits.ssn", "green", SOURCES, "console:t")
        assert not await way.classify("properties.unknown", "red", SOURCES, "console:t")
    assert await listed.classify("properties.f01", "red", SOURCES, "console:t")
    tables = await by_sql.tables(SOURCES, "f01", inbox_from=0, inventory_from=0, limit=50)
    assert [(f.field, f.class_, f.classified_by) for f in tables.inventory.rows] == [
        ("properties.f01", "red", "console:t")
    ]
    assert tables.inbox.rows == []
    assert await by_sql.classify("properties.f01", None, SOURCES, "console:t")
    tables = await listed.tables(SOURCES, "f01", inbox_from=0, inventory_from=0, limit=50)
    assert tables.inventory.rows == []
    assert [f.field for f in tables.inbox.rows] == ["properties.f01"]
