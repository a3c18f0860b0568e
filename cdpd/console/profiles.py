"""The profile explorer (with `[identity]`): look a profile up by TYPE:VALUE (`user_id:u1`,
`email:ada@example.com`) and see its identifiers, traits, recent events and the merges that
made it, each merge with the message that triggered it.

Profiles are resolved across every source; a workspace sees only what its own sources
contributed (identifiers, traits, events and merges with another source are left out), and a
profile none of its sources contributed to answers 404, as if it did not exist.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cdpd.console.access import Principal
from cdpd.console.web import Refused
from cdpd.identity import reads

if TYPE_CHECKING:
    from cdpd.console.web import Console

EVENTS_SHOWN = 20
EVENTS_READ = 200  # the newest of every source, of which the workspace's are shown


def routes(console: Console) -> list[web.RouteDef]:
    local = console.parts.local
    if local is not None and local.identity is None:
        return []  # no profiles without [identity]: no page either
    pages = ProfilePages(console)
    return [web.get("/console/w/{workspace}/profiles", console.page(pages.explorer))]


class ProfilePages:
    def __init__(self, console: Console) -> None:
        self.console = console

    async def explorer(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace = self.console.workspace_for(request, principal)
        identity = self.console.local().identity
        if identity is None or identity.reader is None:  # routed only with [identity]
            raise Refused(404, "Profiles need [identity] in the configuration.")
        lookup = request.query.get("lookup", "").strip()
        context: dict[str, Any] = {
            "title": "Profiles",
            "workspace": workspace,
            "lookup": lookup,
            "profile": None,
            "error": None,
        }
        status = 200
        kind, sep, value = lookup.partition(":")
        if lookup and not (sep and kind and value):
            context["error"] = "Look up TYPE:VALUE, e.g. user_id:u1 or email:ada@example.com."
            status = 422
        elif lookup:
            found = await _profile(identity.reader, set(workspace.sources), kind, value)
            if found is None:
                context["error"] = f"No profile of this workspace has {lookup}."
                status = 404
            context["profile"] = found
        return self.console.render(
            request, "profiles.html", context, status=status, principal=principal
        )


async def _profile(conn: Any, sources: set[str], kind: str, value: str) -> dict[str, Any] | None:
    pid = await reads.find(conn, "users", kind, value)
    if pid is None:
        return None
    identifiers = [i for i in await reads.external_ids(conn, pid) if i.source_id in sources]
    if not identifiers:
        return None
    row = await reads.profile(conn, pid)
    traits = [t for t in await reads.traits(conn, pid) if t.source_id in sources]
    events = await reads.events(
        conn,
        pid,
        start="",
        end="9999",
        before_seq=None,
        after_seq=None,
        descending=True,
        include=None,
        exclude=None,
        limit=EVENTS_READ,
    )
    merges = []
    for merge in await reads.merges(conn, pid):
        if merge.source_id not in sources:
            continue
        message = await reads.payload(conn, merge.seq)
        merges.append({"merge": merge, "message": _pretty(message) if message else None})
    return {
        "id": pid,
        "row": row,
        "identifiers": identifiers,
        "traits": [(t.name, json.dumps(t.value), t.source_id, t.updated_at) for t in traits],
        "events": [
            {"event": e, "message": _pretty(e.payload), "summary": _summary(e.payload)}
            for e in events
            if e.source_id in sources
        ][:EVENTS_SHOWN],
        "merges": merges,
    }


def _summary(payload: str) -> str:
    try:
        message = json.loads(payload)
    except ValueError:
        return "?"
    kind = message.get("type", "?")
    name = message.get("event") or message.get("name") or ""
    return f"{kind} {name}".strip()


def _pretty(payload: str) -> str:
    try:
        return json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    except ValueError:
        return payload
