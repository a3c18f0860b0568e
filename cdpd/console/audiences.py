"""Audience and computed-trait pages: the ones a workspace lists (`[[workspaces]] audiences`),
each with its size, its entries and exits (or new values) per day over the last 30 days, and
the newest changes. Read from Engage's file where the node's Profile API reads
(`seams.ProfileStores`; the queries, which read a few kept rows whatever an audience's size,
in `cdpd.console.profile_data`); before Engage has written it the pages say so.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cdpd.console import profile_data
from cdpd.console.access import Principal
from cdpd.console.profile_data import DAY_MS, DAYS_SHOWN
from cdpd.console.web import Refused
from cdpd.model.timestamps import now_ms

if TYPE_CHECKING:
    from cdpd.console.web import Console


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
        files = self.console.parts.data.profiles.files()
        async with profile_data.engage(files.engage) as conn:
            for key, kind, query in self._definitions(workspace.audiences):
                size = await profile_data.size(conn, key) if conn is not None else None
                rows.append({"key": key, "kind": kind, "query": query, "size": size})
            ready = conn is not None
        context = {
            "title": "Audiences",
            "workspace": workspace,
            "rows": rows,
            "ready": ready,
            "notes": files.notes,
        }
        return self.console.render(request, "audiences.html", context, principal=principal)

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
        files = self.console.parts.data.profiles.files()
        context["notes"] = files.notes
        async with profile_data.engage(files.engage) as conn:
            if conn is not None:
                figures = await profile_data.figures(conn, key)
                context.update(
                    ready=True,
                    size=figures.size,
                    days=figures.days,
                    chart=json.dumps(_chart(figures.days)),
                    newest=figures.newest,
                )
        return self.console.render(request, "audience.html", context, principal=principal)


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
