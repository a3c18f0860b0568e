"""Source pages: the write key (hidden until asked) and snippet, volume over time, rejects and
blocked messages with reasons, the live debugger (server-sent events) and the Protocols pages
(schema, violations)."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cdpd.config import Source
from cdpd.console import overview
from cdpd.console.access import Principal
from cdpd.console.snippet import SOURCE_TYPES, setup, snippet
from cdpd.model.timestamps import now_ms

if TYPE_CHECKING:
    from cdpd.console.web import Console

HEARTBEAT_S = 1.0
# At most this many messages per send, one send per SEND_INTERVAL_S: a watched flood costs a
# bounded number of events per second; the rest is dropped (the debugger is a sample).
SEND_BATCH = 20
SEND_INTERVAL_S = 0.1


def routes(console: Console) -> list[web.RouteDef]:
    pages = SourcePages(console)
    base = "/console/w/{workspace}/sources/{source}"
    return [
        web.get(base, console.page(pages.source)),
        web.get(base + "/write-key", console.page(pages.write_key)),
        web.get(base + "/debugger", console.page(pages.debugger)),
        web.get(base + "/protocols", console.page(pages.protocols)),
    ]


class SourcePages:
    def __init__(self, console: Console) -> None:
        self.console = console

    def _source(
        self, request: web.Request, principal: Principal, needed: str = "read-only"
    ) -> tuple[Any, Source]:
        console = self.console
        workspace = console.workspace_for(request, principal, needed)
        name = request.match_info["source"]
        console.member_of(workspace, "sources", name)
        source = next(s for s in console.config.sources if s.name == name)
        return workspace, source

    async def source(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace, source = self._source(request, principal)
        parts = self.console.parts
        window = overview.window(request.query.get("window"))
        figures = await parts.data.source_figures(source.name, window)
        return self.console.render(
            request,
            "source.html",
            {
                "title": source.name,
                "workspace": workspace,
                "source": source,
                "window": window,
                "windows": list(overview.WINDOWS_S),
                "received": figures.received,
                "rejected": figures.rejected,
                "blocked": figures.blocked,
                "chart": json.dumps(figures.chart) if figures.chart is not None else None,
                "notes": figures.notes,
                "may_operate": principal.may(workspace.name, "member"),
                "may_change": principal.may(workspace.name, "owner"),
                "from_console": parts.changes is not None
                and parts.changes.fragment_of(source.name, "source") is not None,
                "types": SOURCE_TYPES,
                "notice": request.query.get("notice"),
                "capacity": self.console.config.console.debugger_capacity,
            },
            principal=principal,
        )

    async def write_key(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace, source = self._source(request, principal, "member")
        base = self.console.config.server.public_url or f"{request.scheme}://{request.host}"
        return self.console.render(
            request,
            "write_key.html",
            {
                "source": source,
                "snippet": snippet(base, source.write_key),
                "setup": setup(source.type, base, source.write_key),
                "workspace": workspace,
            },
            principal=principal,
        )

    async def debugger(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        """Server-sent events: one `message` event per sampled message, a comment line as a
        heartbeat; it ends when the person leaves or the daemon stops."""
        _, source = self._source(request, principal)
        parts = self.console.parts
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        capacity = self.console.config.console.debugger_capacity
        try:
            async with parts.data.watch(source.name, capacity) as feed:
                await response.write(b": watching\n\n")
                while not parts.closing():
                    rows = await feed.next(HEARTBEAT_S)
                    if not rows:
                        await response.write(b": heartbeat\n\n")
                    for start in range(0, len(rows), SEND_BATCH):
                        if parts.closing():
                            break
                        chunk = rows[start : start + SEND_BATCH]
                        await response.write(b"".join(_event(row) for row in chunk))
                        await asyncio.sleep(SEND_INTERVAL_S)
        except ConnectionResetError:  # the person left
            pass
        return response

    async def protocols(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace, source = self._source(request, principal)
        data = self.console.parts.data
        since_ms = now_ms() - overview.WINDOWS_S["7d"] * 1000
        violations = await data.violations(source.name, since_ms)
        fields = await data.schema(source.name)
        return self.console.render(
            request,
            "protocols.html",
            {
                "title": f"{source.name}: Protocols",
                "workspace": workspace,
                "source": source,
                "violations": violations,
                "fields": fields,
            },
            principal=principal,
        )


def _event(row: Any) -> bytes:
    data = json.dumps(
        {
            "message_id": row.message_id,
            "type": row.type,
            "event": row.event,
            "received_at": row.received_at,
            "payload": row.payload,
        },
        separators=(",", ":"),
    )
    return f"event: message\ndata: {data}\n\n".encode()
