"""Segment's regulation endpoints at the root of the admin API (admin bearer token):

- `POST /regulations` and `POST /regulations/sources/{source}`: `{"regulationType",
  "subjectType", "subjectIds"}` -> `{"data": {"regulateId"}}`, once the regulation is stored
  and its suppressions are in force;
- `GET /regulations[?status=&sourceId=&pagination.count=&pagination.cursor=]`,
  `GET /regulations/sources/{source}`, `GET /regulations/{id}` -> `{"data": {"regulation"}}`;
- `GET /suppressions[?pagination.count=&pagination.cursor=]`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiosqlite
import msgspec
import structlog
from aiohttp import web

from cdpd.config import Config
from cdpd.ingest.body import read_limited
from cdpd.ingest.errors import ApiError, decoded_request
from cdpd.model.timestamps import format_ms, now_ms
from cdpd.outbox.writer import OutboxWriter
from cdpd.privacy import deletion, regulations_store
from cdpd.privacy.regulations import (
    STATUSES,
    RegulationRequest,
    new_id,
    plan_targets,
    unique_subjects,
)
from cdpd.privacy.regulations_service import RegulationService
from cdpd.privacy.regulations_store import NewRegulation, RegulationView, SuppressionView

log = structlog.get_logger("cdpd.privacy")
MAX_PAGE = 200
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # Segment's limit for a regulation request
_encoder = msgspec.json.Encoder()


def new_regulation(
    config: Config, asked: RegulationRequest, source: str | None, now_ms: int
) -> NewRegulation:
    return NewRegulation(
        id=new_id(now_ms),
        regulation_type=asked.regulationType,
        subject_type=asked.subjectType,
        subject_ids=unique_subjects(asked.subjectIds),
        source=source,
        created_at=format_ms(now_ms),
        targets=plan_targets(config, asked.regulationType, source),
    )


def decode_request(body: bytes) -> RegulationRequest:
    return decoded_request(body, RegulationRequest, "regulation")


class RegulationBook(Protocol):
    """Where regulations are kept: the outbox (`OutboxRegulations`) or the cluster's
    regulations bucket (`cdpd.cluster.regulations`)."""

    @property
    def config(self) -> Config:
        """The config in force (its sources, what a regulation's targets are planned from)."""
        ...

    async def create(self, new: NewRegulation) -> None:
        """Store the regulation; its suppressions are in force on this node when it returns."""
        ...

    async def show(self, regulation_id: str) -> RegulationView | None: ...

    async def listing(
        self, *, status: str | None, source: str | None, after_id: str | None, count: int
    ) -> list[RegulationView]:
        """Newest first, `count` of them after the cursor `after_id`."""
        ...

    async def suppression_listing(
        self, *, after_user: str | None, count: int
    ) -> list[SuppressionView]: ...


class OutboxRegulations:
    """The regulations of the SQLite backend, in the outbox's tables."""

    def __init__(
        self, writer: OutboxWriter, reader: aiosqlite.Connection, service: RegulationService
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._service = service

    @property
    def config(self) -> Config:
        return self._service.config

    async def create(self, new: NewRegulation) -> None:
        await self._writer.transact(functools.partial(regulations_store.insert, new=new))
        await self._service.refresh()  # its suppressions are in force before the answer
        # A fence: what ingest queued before they were is committed before the answer, so
        # nothing of a suppressed user is stored after it.
        await deletion.fence(self._writer)

    async def show(self, regulation_id: str) -> RegulationView | None:
        return await regulations_store.show(self._reader, regulation_id)

    async def listing(
        self, *, status: str | None, source: str | None, after_id: str | None, count: int
    ) -> list[RegulationView]:
        return await regulations_store.listing(
            self._reader, status=status, source=source, after_id=after_id, count=count
        )

    async def suppression_listing(
        self, *, after_user: str | None, count: int
    ) -> list[SuppressionView]:
        return await regulations_store.suppression_listing(
            self._reader, after_user=after_user, count=count
        )


class RegulationsApi:
    def __init__(
        self,
        config: Config,
        book: RegulationBook,
        authorize: Callable[[web.Request], Awaitable[None]],
    ) -> None:
        self._server = config.server  # the request limits (a reload does not change them)
        self._book = book
        self._authorize = authorize

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/regulations", self.create),
            web.post("/regulations/sources/{source}", self.create),
            web.get("/regulations", self.listing),
            web.get("/regulations/sources/{source}", self.listing),
            web.get("/regulations/{regulation_id}", self.show),
            web.get("/suppressions", self.suppressions),
        ]

    async def create(self, request: web.Request) -> web.Response:
        await self._authorize(request)
        source = self._source(request)
        asked = decode_request(
            await read_limited(request, MAX_REQUEST_BYTES, self._server.body_timeout_s)
        )
        new = new_regulation(self._book.config, asked, source, now_ms())
        await self._book.create(new)
        log.info(  # never the user ids: the log is not a place to keep them
            "regulation_created",
            regulation=new.id,
            regulation_type=new.regulation_type,
            subjects=len(new.subject_ids),
            source=new.source,
            targets=[t.name for t in new.targets],
        )
        return _json({"data": {"regulateId": new.id}})

    async def show(self, request: web.Request) -> web.Response:
        await self._authorize(request)
        regulation_id = request.match_info["regulation_id"]
        found = await self._book.show(regulation_id)
        if found is None:
            raise ApiError(404, "unknown_regulation", f"no regulation has the id {regulation_id!r}")
        return _json({"data": {"regulation": found}})

    async def listing(self, request: web.Request) -> web.Response:
        await self._authorize(request)
        status = request.query.get("status")
        if status is not None and status not in STATUSES:
            raise ApiError(400, "invalid_request", f"status must be one of {', '.join(STATUSES)}")
        source = self._source(request) or request.query.get("sourceId")
        count = _count(request)
        cursor = request.query.get("pagination.cursor")
        found = await self._book.listing(status=status, source=source, after_id=cursor, count=count)
        following = found[-1].id if len(found) == count else None
        return _json(
            {
                "data": {
                    "regulations": found,
                    "pagination": {"current": cursor, "next": following},
                }
            }
        )

    async def suppressions(self, request: web.Request) -> web.Response:
        await self._authorize(request)
        count = _count(request)
        cursor = request.query.get("pagination.cursor")
        found = await self._book.suppression_listing(after_user=cursor, count=count)
        following = found[-1].userId if len(found) == count else None
        return _json(
            {
                "data": {
                    "suppressions": found,
                    "pagination": {"current": cursor, "next": following},
                }
            }
        )

    def _source(self, request: web.Request) -> str | None:
        source = request.match_info.get("source")
        if source is not None and source not in {s.name for s in self._book.config.sources}:
            raise ApiError(404, "unknown_source", f"no source is named {source!r}")
        return source


def _count(request: web.Request) -> int:
    text = request.query.get("pagination.count", "100")
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise ApiError(
            400, "invalid_request", f"pagination.count must be a whole number from 1 to {MAX_PAGE}"
        )
    return int(text)


def _json(body: object) -> web.Response:
    return web.Response(body=_encoder.encode(body), content_type="application/json")
