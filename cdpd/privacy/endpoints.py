"""Admin endpoints of the privacy portal (bearer token): the inbox, the inventory, and
classifying a field, which takes effect at once for every control. The same on both storage
backends: where the inbox and inventory live is a `PortalStore` (the outbox here, the
cluster's buckets in cdpd/cluster/privacy_stage.py)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

import aiosqlite
import msgspec
from aiohttp import web

from cdpd.ingest.errors import ApiError, decoded_request
from cdpd.model.timestamps import format_ms, now_ms, parse_ms
from cdpd.outbox.writer import OutboxWriter
from cdpd.privacy import store
from cdpd.privacy.controls import field_problem
from cdpd.privacy.portal import Portal


class ClassifyRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    field: str
    # None takes the field out of the inventory.
    class_: Literal["red", "yellow", "green"] | None = msgspec.field(name="class")


class PortalStore(Protocol):
    """Where the inbox and the inventory live."""

    async def inbox(
        self, *, source: str | None, include_classified: bool, since: str | None
    ) -> list[store.InboxField]: ...

    async def inventory(self) -> list[store.InventoryField]: ...

    async def classify(self, field: str, class_: str | None, at: str, by: str) -> None:
        """Stored, and in force on this node, when it returns."""


class OutboxPortal:
    """The inbox and inventory in the outbox; a classification is put in force at once."""

    def __init__(self, writer: OutboxWriter, reader: aiosqlite.Connection, portal: Portal) -> None:
        self._writer = writer
        self._reader = reader
        self._portal = portal

    async def inbox(
        self, *, source: str | None, include_classified: bool, since: str | None
    ) -> list[store.InboxField]:
        return await store.inbox(
            self._reader, source=source, include_classified=include_classified, since=since
        )

    async def inventory(self) -> list[store.InventoryField]:
        return await store.inventory(self._reader)

    async def classify(self, field: str, class_: str | None, at: str, by: str) -> None:
        await self._writer.transact(functools.partial(store.classify, field, class_, at, by))
        self._portal.inventory.classify(field, class_)


class PrivacyEndpoints:
    def __init__(
        self, portal: PortalStore, authorize: Callable[[web.Request], Awaitable[None]]
    ) -> None:
        self._portal = portal
        self._authorize = authorize

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin/privacy/inbox", self.inbox),
            web.get("/admin/privacy/inventory", self.inventory),
            web.post("/admin/privacy/classify", self.classify),
        ]

    async def inbox(self, request: web.Request) -> web.Response:
        """Fields seen and not classified yet (`all=true`: classified ones too; `since`:
        last seen from then)."""
        await self._authorize(request)
        since = request.query.get("since")
        if since is not None:
            try:
                since = format_ms(parse_ms(since))
            except ValueError:
                raise ApiError(400, "invalid_request", "since: expected an ISO-8601 time") from None
        found = await self._portal.inbox(
            source=request.query.get("source"),
            include_classified=request.query.get("all") == "true",
            since=since,
        )
        return _json({"fields": found})

    async def inventory(self, request: web.Request) -> web.Response:
        await self._authorize(request)
        return _json({"fields": await self._portal.inventory()})

    async def classify(self, request: web.Request) -> web.Response:
        await self._authorize(request)
        asked = decoded_request(await request.read(), ClassifyRequest, "classify")
        problem = field_problem(asked.field)
        if problem is not None:
            raise ApiError(400, "invalid_field", problem)
        await self._portal.classify(asked.field, asked.class_, format_ms(now_ms()), "admin api")
        return _json({"field": asked.field, "class": asked.class_})


_encoder = msgspec.json.Encoder()


def _json(body: object) -> web.Response:
    return web.Response(body=_encoder.encode(body), content_type="application/json")
