"""Audience and computed-trait pages: the ones a workspace lists (`[[workspaces]] audiences`),
each with its size, its entries and exits (or new values) per day over the last 30 days, and
the newest changes. Read from Engage's own file (`engage.sqlite3`), read-only; before Engage
has written it the pages say so.

Sizes and per-day counts are the ones Engage keeps as memberships change (`engage_sizes`,
`engage_change_days`): a page reads a few rows whatever the audience's size. The newest
changes come by the `engage_changes (key, seq)` index.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
from aiohttp import web

from cdpd.config import engage_path
from cdpd.console.access import Principal
from cdpd.console.web import Refused
from cdpd.model.timestamps import format_ms, now_ms, parse_ms

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
                days = await _per_day(conn, key)
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
    """Kept by Engage as memberships change (`engage_sizes`); a file Engage has not migrated
    yet is counted."""
    try:
        rows = await conn.execute_fetchall("SELECT size FROM engage_sizes WHERE key = ?", (key,))
    except sqlite3.OperationalError:  # a version 2 file: no engage_sizes yet
        rows = await conn.execute_fetchall(
            "SELECT count(*) FROM engage_values WHERE key = ?", (key,)
        )
    return int(next(iter(rows), (0,))[0])


async def _per_day(conn: aiosqlite.Connection, key: str) -> list[dict[str, Any]]:
    """Entries, exits and new values per UTC day, the last DAYS_SHOWN days, newest first
    (`engage_change_days`, kept by Engage as it records changes)."""
    first_day = format_ms((now_ms() // DAY_MS - DAYS_SHOWN + 1) * DAY_MS)[:10]
    try:
        rows = await conn.execute_fetchall(
            "SELECT day, entered, exited, computed FROM engage_change_days"
            " WHERE key = ? AND day >= ? ORDER BY day DESC",
            (key, first_day),
        )
    except sqlite3.OperationalError:  # a version 2 file: no engage_change_days yet
        return []
    return [
        {
            "t": parse_ms(f"{day}T00:00:00Z") // 1000,
            "day": day,
            "entered": entered,
            "exited": exited,
            "computed": computed,
        }
        for day, entered, exited, computed in rows
    ]


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
