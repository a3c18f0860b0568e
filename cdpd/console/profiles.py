"""The profile explorer (with `[identity]`): look a profile up by TYPE:VALUE (`user_id:u1`,
`email:ada@example.com`) and see its identifiers, traits, recent events and the merges that
made it, each merge with the message that triggered it. Read where the node's Profile API
reads (`seams.ProfileStores`; the queries in `cdpd.console.profile_data`).

Profiles are resolved across every source; a workspace sees only what its own sources
contributed (identifiers, traits, events and merges with another source are left out), and a
profile none of its sources contributed to answers 404, as if it did not exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from cdpd.console import profile_data
from cdpd.console.access import Principal
from cdpd.console.web import Refused

if TYPE_CHECKING:
    from cdpd.console.web import Console


def routes(console: Console) -> list[web.RouteDef]:
    if not console.parts.data.profiles.resolved:
        return []  # no profiles without [identity]: no page either
    pages = ProfilePages(console)
    return [web.get("/console/w/{workspace}/profiles", console.page(pages.explorer))]


class ProfilePages:
    def __init__(self, console: Console) -> None:
        self.console = console

    async def explorer(self, request: web.Request, principal: Principal) -> web.StreamResponse:
        workspace = self.console.workspace_for(request, principal)
        files = self.console.parts.data.profiles.files()
        lookup = request.query.get("lookup", "").strip()
        context: dict[str, Any] = {
            "title": "Profiles",
            "workspace": workspace,
            "lookup": lookup,
            "profile": None,
            "error": None,
            "notes": files.notes,
            "missing": files.missing if files.identity is None else None,
        }
        status = 200
        kind, sep, value = lookup.partition(":")
        if lookup and not (sep and kind and value):
            context["error"] = "Look up TYPE:VALUE, e.g. user_id:u1 or email:ada@example.com."
            status = 422
        elif lookup and files.identity is None:
            raise Refused(404, files.missing)
        elif lookup and files.identity is not None:
            found = await profile_data.profile(
                files.identity, set(workspace.sources), kind, value, events_kept=files.events_kept
            )
            if found is None:
                context["error"] = f"No profile of this workspace has {lookup}."
                status = 404
            context["profile"] = found
        return self.console.render(
            request, "profiles.html", context, status=status, principal=principal
        )
