"""The Privacy page of a workspace: the inbox (fields its sources sent that nobody classified
yet, with the suggested class and a sample), the inventory of the fields its sources sent, and
the classify buttons (member). The inventory itself is one per cdpd (a class applies to the
field wherever it is sent), so a workspace sees and classifies only fields its own sources
sent; anything else answers 404.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from aiohttp import web

from cdpd.console.access import Principal
from cdpd.console.web import Refused, redirect
from cdpd.model.timestamps import format_ms, now_ms
from cdpd.privacy import store

if TYPE_CHECKING:
    from cdpd.console.web import Console

CLASSES = ("red", "yellow", "green")
ROWS_SHOWN = 200  # per table, strongest suggestion first; `cdpd privacy inbox` lists all


def routes(console: Console) -> list[web.RouteDef]:
    pages = PrivacyPages(console)
    base = "/console/w/{workspace}/privacy"
    return [
        web.get(base, console.page(pages.privacy)),
        web.post(base + "/classify", console.page(pages.classify, change=True)),
    ]


class PrivacyPages:
    def __init__(self, console: Console) -> None:
        self.console = console

    async def _seen(self, sources: list[str]) -> list[store.InboxField]:
        """Every field the sources sent, classified or not."""
        found: list[store.InboxField] = []
        for source in sources:
            found += await store.inbox(
                self.console.parts.reader, source=source, include_classified=True
            )
        return found

    async def privacy(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace = self.console.workspace_for(request, principal)
        seen = await self._seen(workspace.sources)
        classes = {f.field: f for f in await store.inventory(self.console.parts.reader)}
        fields = sorted({f.field for f in seen})
        inbox = [f for f in seen if f.class_ is None]
        inventory = [classes[name] for name in fields if name in classes]
        return self.console.render(
            request,
            "privacy.html",
            {
                "title": "Privacy",
                "workspace": workspace,
                "inbox": inbox[:ROWS_SHOWN],
                "inbox_total": len(inbox),
                "inventory": inventory[:ROWS_SHOWN],
                "inventory_total": len(inventory),
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
        if field not in {f.field for f in await self._seen(workspace.sources)}:
            raise Refused(404, f"No source of {workspace.name} sent a field {field!r}.")
        class_ = None if chosen == "none" else chosen
        parts = self.console.parts
        by = f"console:{principal.name}"
        await parts.writer.transact(
            functools.partial(store.classify, field, class_, format_ms(now_ms()), by)
        )
        parts.governance.privacy.inventory.classify(field, class_)
        from urllib.parse import quote

        notice = f"{field} is {chosen}" if class_ else f"{field} is out of the inventory"
        return redirect(f"/console/w/{workspace.name}/privacy?notice={quote(notice)}")
