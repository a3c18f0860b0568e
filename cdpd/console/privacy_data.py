"""The Privacy page's data (`seams.PrivacyData`) on both backends: SQL over the outbox's
privacy tables, and, where the inbox and inventory are a `PortalStore` that only lists them
whole (the cluster's buckets), the same filter, order and paging done in Python over the
listing: each page view reads both buckets' latest entries, which docs/scaling.md costs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import aiosqlite

from cdpd.console.seams import PrivacyTables
from cdpd.console.web import Refused
from cdpd.ingest.errors import ApiError
from cdpd.model.timestamps import format_ms, now_ms
from cdpd.privacy import store
from cdpd.privacy.endpoints import PortalStore
from cdpd.privacy.store import InboxField, InventoryField, Page


class OutboxPrivacy:
    """The tables read with SQL from the outbox; classified through its portal store."""

    def __init__(self, reader: aiosqlite.Connection, portal: PortalStore) -> None:
        self._reader = reader
        self._portal = portal

    async def tables(
        self, sources: list[str], containing: str, *, inbox_from: int, inventory_from: int,
        limit: int,
    ) -> PrivacyTables:  # fmt: skip
        reader = self._reader
        return PrivacyTables(
            inbox=await store.inbox_page(
                reader, sources, containing=containing, limit=limit, offset=inbox_from
            ),
            inventory=await store.inventory_page(
                reader, sources, containing=containing, limit=limit, offset=inventory_from
            ),
        )

    async def classify(self, field: str, class_: str | None, sources: list[str], by: str) -> bool:
        if not await store.sent_by(self._reader, field, sources):
            return False
        await self._portal.classify(field, class_, format_ms(now_ms()), by)
        return True


class ListedPrivacy:
    """The tables filtered, ordered and paged in Python over a portal store's whole listing
    (which comes in the order the page shows)."""

    def __init__(self, portal: PortalStore) -> None:
        self._portal = portal

    async def tables(
        self, sources: list[str], containing: str, *, inbox_from: int, inventory_from: int,
        limit: int,
    ) -> PrivacyTables:  # fmt: skip
        with _answered():
            seen, inventory = await asyncio.gather(
                self._portal.inbox(source=None, include_classified=True, since=None),
                self._portal.inventory(),
            )
        needle = containing.lower()
        sent = [r for r in seen if r.source in sources and needle in r.field.lower()]
        return PrivacyTables(
            inbox=_page([r for r in sent if r.class_ is None], inbox_from, limit),
            inventory=_page(_sent_fields(inventory, sent), inventory_from, limit),
        )

    async def classify(self, field: str, class_: str | None, sources: list[str], by: str) -> bool:
        with _answered():
            seen = await self._portal.inbox(source=None, include_classified=True, since=None)
            if not any(r.field == field and r.source in sources for r in seen):
                return False
            await self._portal.classify(field, class_, format_ms(now_ms()), by)
        return True


@contextlib.contextmanager
def _answered() -> Iterator[None]:
    """The store's error (a 503 where the cluster did not answer) as the console's page."""
    try:
        yield
    except ApiError as exc:
        raise Refused(exc.status, str(exc)) from None


def _sent_fields(inventory: list[InventoryField], sent: list[InboxField]) -> list[InventoryField]:
    fields = {r.field for r in sent}
    return [f for f in inventory if f.field in fields]


def _page(rows: list[InboxField] | list[InventoryField], offset: int, limit: int) -> Page:
    return Page(list(rows[offset : offset + limit]), len(rows))
