"""Audience and computed-trait pages: the ones a workspace lists (`[[workspaces]] audiences`),
each with its size, its entries and exits (or new values) per day over the last 30 days, and
the newest changes. Read from Engage's own file (`engage.sqlite3`), read-only; before Engage
has written it the pages say so.

Changes are only ever appended (`engage_changes.seq` grows), so the per-day counts are kept
in memory per key and each view reads only the changes after the last one counted (by the
`(key, seq)` index); the first view after a start reads the key's last 30 days once. The size
is a count over `engage_values`'s primary key (collection, key, id).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
from aiohttp import web

from cdpd.config import engage_path
from cdpd.console.access import Principal
from cdpd.console.web import Refused
from cdpd.model.timestamps import format_ms, now_ms

if TYPE_CHECKING:
    from cdpd.console.web import Console

DAY_MS = 86_400_000
DAYS_SHOWN = 30
NEWEST_SHOWN = 20


def routes(console: Console) -> list[web.RouteDef]:
    pages = AudiencePages(console)
    base = "/console/w/{workspace}/audiences"
    return [
        web.get(base, console.page(pages.listing)),
        web.get(base + "/{key}", console.page(pages.detail)),
    ]


class AudiencePages:
    def __init__(self, console: Console) -> None:
        self.console = console
        self._tallies: dict[tuple[str, str], Tally] = {}

    def _definitions(self, keys: list[str]) -> list[tuple[str, str, str]]:
        """(key, kind, query) of the workspace's audiences and computed traits."""
        config = self.console.config
        found = [(a.key, "audience", a.query) for a in config.audiences]
        found += [(t.key, "computed trait", t.query) for t in config.computed_traits]
        return [d for d in found if d[0] in keys]

    async def listing(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace = self.console.workspace_for(request, principal)
        rows = []
        async with _engage(engage_path(self.console.config)) as conn:
            for key, kind, query in self._definitions(workspace.audiences):
                size = await _size(conn, key) if conn is not None else None
                rows.append({"key": key, "kind": kind, "query": query, "size": size})
            ready = conn is not None
        return self.console.render(
            request,
            "audiences.html",
            {"title": "Audiences", "workspace": workspace, "rows": rows, "ready": ready},
            principal=principal,
        )

    async def detail(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace = self.console.workspace_for(request, principal)
        key = request.match_info["key"]
        found = self._definitions(workspace.audiences)
        definition = next((d for d in found if d[0] == key), None)
        if definition is None:
            raise Refused(404, f"There is no audience or computed trait {key!r} here.")
        context: dict[str, Any] = {
            "title": key,
            "workspace": workspace,
            "key": key,
            "kind": definition[1],
            "query": definition[2],
            "ready": False,
        }
        path = engage_path(self.console.config)
        async with _engage(path) as conn:
            if conn is not None:
                tally = self._tallies.setdefault((str(path), key), Tally())
                days = await tally.per_day(conn, key)
                context.update(
                    ready=True,
                    size=await _size(conn, key),
                    days=days,
                    chart=json.dumps(_chart(days)),
                    newest=await _newest(conn, key),
                )
        return self.console.render(request, "audience.html", context, principal=principal)


@contextlib.asynccontextmanager
async def _engage(path: Path) -> AsyncIterator[aiosqlite.Connection | None]:
    """Engage's file read-only, or None before Engage has created it (mode=ro never creates
    a file)."""
    try:
        conn = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        yield None
        return
    try:
        yield conn
    finally:
        await conn.close()


async def _size(conn: aiosqlite.Connection, key: str) -> int:
    rows = await conn.execute_fetchall(
        "SELECT count(*) FROM engage_values WHERE collection IN ('users', 'accounts') AND key = ?",
        (key,),
    )
    return int(next(iter(rows))[0])


@dataclass
class Tally:
    """A key's changes per UTC day, counted up to `seq`."""

    seq: int = 0
    days: dict[int, dict[str, Any]] = field(default_factory=dict)

    async def per_day(self, conn: aiosqlite.Connection, key: str) -> list[dict[str, Any]]:
        """Entries, exits and new values per day, the last DAYS_SHOWN days, newest first."""
        first_day = now_ms() // DAY_MS - DAYS_SHOWN + 1
        (last,) = next(iter(await conn.execute_fetchall("SELECT max(seq) FROM engage_changes")))
        if last is None or last < self.seq:  # a new Engage file: count again
            self.seq, self.days = 0, {}
        rows = await conn.execute_fetchall(
            "SELECT at_ms / ? AS day, change, count(*), max(seq) FROM engage_changes"
            " WHERE key = ? AND seq > ? AND seq <= ? AND at_ms >= ? GROUP BY day, change",
            (DAY_MS, key, self.seq, last or 0, first_day * DAY_MS),
        )
        for day, change, count, _ in rows:
            self._day(day)[change] = self._day(day).get(change, 0) + count
        self.seq = last or 0
        self.days = {d: v for d, v in self.days.items() if d >= first_day}
        return [self.days[d] for d in sorted(self.days, reverse=True)]

    def _day(self, day: int) -> dict[str, Any]:
        return self.days.setdefault(
            day,
            {
                "t": day * DAY_MS // 1000,
                "day": format_ms(day * DAY_MS)[:10],
                "entered": 0,
                "exited": 0,
                "computed": 0,
            },
        )


def _chart(days: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Every one of the last DAYS_SHOWN days, zero where nothing changed."""
    by_t = {d["t"]: d for d in days}
    today = now_ms() // DAY_MS
    ts = [(today - back) * DAY_MS // 1000 for back in range(DAYS_SHOWN - 1, -1, -1)]
    return {
        "t": ts,
        "entered": [by_t[t]["entered"] if t in by_t else 0 for t in ts],
        "exited": [by_t[t]["exited"] if t in by_t else 0 for t in ts],
    }


async def _newest(conn: aiosqlite.Connection, key: str) -> list[dict[str, Any]]:
    rows = await conn.execute_fetchall(
        "SELECT collection, id, change, value, at_ms FROM engage_changes WHERE key = ?"
        " ORDER BY seq DESC LIMIT ?",
        (key, NEWEST_SHOWN),
    )
    return [
        {"collection": c, "id": i, "change": ch, "value": v, "at": format_ms(at)}
        for c, i, ch, v, at in rows
    ]
