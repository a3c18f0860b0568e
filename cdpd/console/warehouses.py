"""Warehouse pages: the sync history with each run's rows and discards, and "sync now"."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from cdpd.console.access import Principal
from cdpd.console.seams import Unavailable
from cdpd.console.web import Refused, redirect
from cdpd.warehouse import loader
from cdpd.warehouse.sinks import open_sink

if TYPE_CHECKING:
    from cdpd.console.web import Console

SYNCS_SHOWN = 30


def routes(console: Console) -> list[web.RouteDef]:
    pages = WarehousePages(console)
    base = "/console/w/{workspace}/warehouses/{warehouse}"
    return [
        web.get(base, console.page(pages.warehouse)),
        web.post(base + "/sync", console.page(pages.sync_now, change=True)),
    ]


class WarehousePages:
    def __init__(self, console: Console) -> None:
        self.console = console

    def _warehouse(
        self, request: web.Request, principal: Principal, needed: str = "read-only"
    ) -> tuple[Any, Any]:
        console = self.console
        workspace = console.workspace_for(request, principal, needed)
        name = request.match_info["warehouse"]
        console.member_of(workspace, "warehouses", name)
        return workspace, next(w for w in console.config.warehouses if w.name == name)

    async def warehouse(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace, warehouse = self._warehouse(request, principal)
        error, syncs = None, []
        try:
            async with open_sink(self.console.config, warehouse) as sink:
                syncs = await sink.recent_syncs(SYNCS_SHOWN)
        except loader.SYNC_ERRORS as exc:
            error = str(exc)
        return self.console.render(
            request,
            "warehouse.html",
            {
                "title": warehouse.name,
                "workspace": workspace,
                "warehouse": warehouse,
                "syncs": syncs,
                "error": error,
                "holder": await self.console.parts.data.warehouse_holder(warehouse.name),
                "may_operate": principal.may(workspace.name, "member"),
                "notice": request.query.get("notice"),
            },
            principal=principal,
        )

    async def sync_now(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace, warehouse = self._warehouse(request, principal, "member")
        try:
            notice = await self.console.parts.data.sync_now(warehouse.name)
        except Unavailable as exc:
            raise Refused(409, str(exc)) from None

        return redirect(
            f"/console/w/{workspace.name}/warehouses/{warehouse.name}?notice={quote(notice)}"
        )
