"""Pages a storage backend does not serve yet: their URLs stay, each answering with the reason
(a `200` page for a GET, a `409` for a change), behind the same access rules as the page would
have (signed in, a role in the workspace, else 404)."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from aiohttp import web

from cdpd.console.access import Principal
from cdpd.console.web import Refused

if TYPE_CHECKING:
    from cdpd.console.web import Console


def routes(console: Console, module: ModuleType, reason: str) -> list[web.RouteDef]:
    """The URLs of `module` (a page module with a `routes(console)`), each saying `reason`."""
    title = module.__name__.rsplit(".", 1)[-1].replace("_", " ").capitalize()

    async def shown(request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace = console.workspace_for(request, principal)
        if request.method != "GET":
            raise Refused(409, f"Not available on this backend yet: {reason}")
        context = {"title": title, "workspace": workspace, "reason": reason}
        return console.render(request, "unavailable.html", context, principal=principal)

    return [
        web.route(r.method, r.path, console.page(shown, change=r.method != "GET"))
        for r in module.routes(console)
        if isinstance(r, web.RouteDef)
    ]
