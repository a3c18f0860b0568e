"""`POST /admin/profiles/unmerge` on a JetStream node (what `cdpd profiles unmerge` posts): any
node asks the holder of the profiles lease (`cdpd.cluster.profile_commands`) and answers as
the SQLite backend does (`cdpd.admin`); a 503 when no node holds the lease or the holder does
not answer within `UNMERGE_WAIT_S`."""

from __future__ import annotations

import msgspec
from aiohttp import web
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from cdpd.admin import unmerge_request
from cdpd.cluster.node_web import cluster_answers, require_admin
from cdpd.cluster.profile_commands import (
    DONE,
    REFUSED,
    TAKEN,
    UNMERGE,
    WITHDRAWN,
    Outcome,
    ProfileCommands,
)
from cdpd.ingest.errors import ApiError

UNMERGE_WAIT_S = 10.0


class ProfileAdmin:
    def __init__(
        self, token: str | None, commands: ProfileCommands, leases: KeyValue, lease_key: str
    ) -> None:
        self._token = token
        self._commands = commands
        self._leases = leases
        self._lease_key = lease_key

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/admin/profiles/unmerge", self.unmerge)]

    async def unmerge(self, request: web.Request) -> web.Response:
        """Split an identifier off its profile, on the holder of the profiles lease."""
        require_admin(self._token, request)
        asked, kind, value = unmerge_request(await request.read())
        with cluster_answers():
            holder = await self._holder()
        if holder is None:
            raise ApiError(
                503,
                "no_profiles_holder",
                "no node holds the profiles lease (identity resolution runs on its holder);"
                " try again once a node has taken it",
            )
        with cluster_answers():
            outcome = await self._commands.ask(
                UNMERGE, UNMERGE_WAIT_S, identifier=(kind, value), collection=asked.collection
            )
        if outcome.state == DONE:
            body = {"identifier": asked.identifier, "profiles": outcome.profiles}
            return web.Response(body=msgspec.json.encode(body), content_type="application/json")
        if outcome.state == REFUSED:
            raise ApiError(409, "cannot_unmerge", outcome.error or "refused")
        raise ApiError(503, "profiles_holder_busy", _unanswered(outcome))

    async def _holder(self) -> str | None:
        """The node holding the profiles lease, if any."""
        try:
            entry = await self._leases.get(self._lease_key)
        except KeyNotFoundError:  # deleted (released) or expired too
            return None
        return entry.value.decode() if entry.value else None


def _unanswered(outcome: Outcome) -> str:
    if outcome.state == WITHDRAWN:
        return (
            f"the profiles lease holder did not take the unmerge within {UNMERGE_WAIT_S:g} s;"
            " it was withdrawn and will not be applied"
        )
    if outcome.state == TAKEN:
        return (
            f"the profiles lease holder took the unmerge but did not finish it within"
            f" {UNMERGE_WAIT_S:g} s; it will still be applied"
        )
    return f"the profiles lease holder could not apply the unmerge: {outcome.error}"
