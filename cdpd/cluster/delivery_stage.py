"""Delivery as a stage of a JetStream node (cdpd/cluster/node.py): entered after the streams
are made sure of, it builds the lanes, creates their consumers and delivers in the node's task
group; exited after HTTP has drained (SIGTERM), it lets the attempts in flight finish (up to
`[delivery] drain_timeout_s`; what is cut off is redelivered after `ack_wait`). Its lanes feed
the node's counts per interval for the console (cdpd/cluster/flow_counts.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import aiohttp

from cdpd.cluster.admin import ClusterAdmin
from cdpd.cluster.delivery import ClusterDelivery
from cdpd.destinations.file import File

if TYPE_CHECKING:
    from cdpd.cluster.node import NodeParts


@asynccontextmanager
async def delivery_stage(parts: NodeParts) -> AsyncIterator[ClusterAdmin]:
    """The node's delivery, its lanes counted by the node's `FlowRecorder` (which flushes once
    more after every stage stopped); its value serves the delivery admin endpoints."""
    flow = parts.flow
    parts.delivery_store.routed = flow.routed
    async with aiohttp.ClientSession() as session:
        delivery = ClusterDelivery(
            parts.config,
            parts.js,
            session,
            parts.clock,
            node=parts.node_name,
            observer=flow.observer,
            restarts=parts.restarts,
            privacy=parts.privacy,
            store=parts.delivery_store,
        )
        await delivery.start()
        if parts.file_erasure is not None:
            files = {n: s for n, s in delivery.senders.items() if isinstance(s, File)}
            await parts.file_erasure.attach(files)
        flow.follow(delivery.lanes)
        admin = ClusterAdmin(parts.config, parts.js, delivery)
        parts.metrics.registry.register(admin.collector)
        stop = asyncio.Event()
        running = parts.tasks.create_task(delivery.run(stop), name="delivery")
        try:
            yield admin
        finally:
            stop.set()
            await running
