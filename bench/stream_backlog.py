"""A backlog for the JetStream benches: outbox rows published to the messages stream as ingest
publishes them (subject and headers), a chunk of publishes' acks awaited together."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from nats.js import JetStreamContext

from cdpd.cluster.layout import Layout, headers_of
from cdpd.model.rows import OutboxRow


async def publish_rows(
    js: JetStreamContext,
    layout: Layout,
    rows: Iterable[OutboxRow],
    *,
    by_source: bool,
    at_once: int = 500,
) -> None:
    """Publish `rows` in order, `at_once` of them in flight (`by_source`: dedup ids scoped by
    source, as `[storage] dedup_scope = "source"` does)."""
    pending = []
    for row in rows:
        headers = headers_of(row, by_source=by_source)
        pending.append(js.publish(layout.subject_for(row), row.payload.encode(), headers=headers))
        if len(pending) == at_once:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
