"""The Privacy page of a workspace: the inbox (fields its sources sent that nobody classified
yet, with the suggested class and a sample), the inventory of the fields its sources sent, and
the classify buttons (member); a page of each at a time, searchable by field name. The
inventory itself is one per cdpd (a class applies to the field wherever it is sent), so a
workspace sees and classifies only fields its own sources sent; anything else answers 404.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import web

from cdpd.console.access import Principal
from cdpd.console.web import Refused, redirect

if TYPE_CHECKING:
    from cdpd.console.web import Console

CLASSES = ("red", "yellow", "green")
ROWS_SHOWN = 50  # per table and page; `cdpd privacy inbox` and `inventory` list all


def routes(console: Console) -> list[web.RouteDef]:
    pages = PrivacyPages(console)
    base = "/console/w/{workspace}/privacy"
    return [
        web.get(base, console.page(pages.privacy)),
        web.post(base + "/classify", console.page(pages.classify, change=True)),
    ]


def _page_number(request: web.Request, name: str) -> int:
    text = request.query.get(name, "1")
    return int(text) if text.isdigit() and 0 < int(text) < 1_000_000 else 1


class PrivacyPages:
    def __init__(self, console: Console) -> None:
        self.console = console

    async def privacy(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        """A page of each table (the workspace's fields only), filtered by a text in the
        field's name; the counts are over every matching field."""
        workspace = self.console.workspace_for(request, principal)
        containing = request.query.get("q", "")[:200]
        pages = {
            "inbox": _page_number(request, "inbox"),
            "inventory": _page_number(request, "inventory"),
        }
        tables = await self.console.parts.data.privacy.tables(
            workspace.sources, containing, limit=ROWS_SHOWN,
            inbox_from=(pages["inbox"] - 1) * ROWS_SHOWN,
            inventory_from=(pages["inventory"] - 1) * ROWS_SHOWN,
        )  # fmt: skip
        inbox, inventory = tables.inbox, tables.inventory
        return self.console.render(
            request,
            "privacy.html",
            {
                "title": "Privacy",
                "workspace": workspace,
                "inbox": inbox.rows,
                "inbox_total": inbox.total,
                "inventory": inventory.rows,
                "inventory_total": inventory.total,
                "pages": pages,
                "rows_shown": ROWS_SHOWN,
                "q": containing,
                "classes": CLASSES,
                "may_operate": principal.may(workspace.name, "member"),
                "notice": request.query.get("notice"),
            },
            principal=principal,
        )

    async def classify(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace = self.console.workspace_for(request, principal, "member")
        form = await request.post()
        field = str(form.get("field", ""))
        chosen = str(form.get("class", ""))
        if chosen not in (*CLASSES, "none"):
            raise Refused(422, f"class: expected one of {', '.join(CLASSES)} or none")
        class_ = None if chosen == "none" else chosen
        privacy = self.console.parts.data.privacy
        if not await privacy.classify(
            field, class_, workspace.sources, f"console:{principal.name}"
        ):
            raise Refused(404, f"No source of {workspace.name} sent a field {field!r}.")
        notice = f"{field} is {chosen}" if class_ else f"{field} is out of the inventory"
        return redirect(f"/console/w/{workspace.name}/privacy?notice={quote(notice)}")
