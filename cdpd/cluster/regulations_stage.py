"""The regulation API on a JetStream node: every node serves it (Segment's endpoints, the same
contract as the SQLite backend's, `cdpd.privacy.regulations_api`), keeps its ingest's
suppressions fed from the cluster, and takes its turn at the regulations lease."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from cdpd import startup
from cdpd.cluster.lease import Lease
from cdpd.cluster.node_web import require_admin
from cdpd.cluster.profile_commands import ProfileCommands
from cdpd.cluster.regulations import ClusterRegulations
from cdpd.cluster.regulations_worker import LEASE_KEY, RegulationLeader
from cdpd.cluster.suppression_feed import SuppressionFeed
from cdpd.privacy.regulations_api import RegulationsApi

if TYPE_CHECKING:
    from cdpd.cluster.node import NodeParts

READY_TIMEOUT_S = 30.0  # for the stored suppressions to be read at start


@dataclass
class Regulations:
    """The stage's parts, for the node's routes and for tests."""

    api: RegulationsApi
    book: ClusterRegulations
    feed: SuppressionFeed
    leader: RegulationLeader

    def routes(self) -> list[web.RouteDef]:
        return self.api.routes()


@asynccontextmanager
async def regulations_stage(parts: NodeParts) -> AsyncIterator[Regulations]:
    """Enters once the stored suppressions are in force here (before ingest opens)."""
    kv = await parts.js.key_value(parts.layout.regulations_bucket)
    feed = SuppressionFeed(kv, parts.governance.suppressions)
    book = ClusterRegulations(parts.config, parts.js, kv, feed.in_force)
    token = parts.config.admin.resolved_token()

    async def authorize(request: web.Request) -> None:
        require_admin(token, request)

    leases = await parts.js.key_value(parts.layout.leases_bucket)
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        leader = RegulationLeader(
            parts.config,
            parts.js,
            parts.layout,
            book,
            Lease(leases, LEASE_KEY, parts.node_name),
            parts.clock,
            session,
            ProfileCommands(parts.js, parts.layout),
        )
        running = [
            parts.tasks.create_task(
                parts.supervised(name, service, stop), name=f"regulations-{name}"
            )
            for name, service in (("suppressions", feed.run), ("regulations", leader.run))
        ]
        try:
            try:
                async with asyncio.timeout(READY_TIMEOUT_S):
                    await feed.ready.wait()
            except TimeoutError:
                raise startup.StartupError(
                    f"the suppressions in {parts.layout.regulations_bucket} could not be read"
                    f" within {READY_TIMEOUT_S:g} s"
                ) from None
            api = RegulationsApi(parts.config, book, authorize)
            yield Regulations(api, book, feed, leader)
        finally:
            stop.set()
            await asyncio.gather(*running, return_exceptions=True)
