"""`cdpd privacy inbox|classify|inventory|scan` on the JetStream backend: the cluster's
buckets, read and written the way a node does (cdpd/cluster/privacy_store.py), and the messages
stream for `scan`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.js import JetStreamContext

from cdpd.cluster import connect
from cdpd.cluster.connect import ClusterUnreachable
from cdpd.cluster.layout import Layout
from cdpd.cluster.privacy_store import ClusterPrivacy
from cdpd.cluster.warehouse import read_after
from cdpd.config import Config
from cdpd.model.timestamps import format_ms, now_ms
from cdpd.privacy.scan import PAGE_ROWS, ScanHit, hit_of
from cdpd.privacy.store import InboxField, InventoryField

__all__ = ["ClusterUnreachable", "classify", "inbox", "inventory", "scan"]


@asynccontextmanager
async def _cluster(config: Config) -> AsyncIterator[tuple[JetStreamContext, Layout]]:
    jetstream = config.storage.jetstream
    layout = Layout.of(jetstream)
    async with connect.connected(jetstream, name="cdpd privacy") as client:
        js = client.jetstream(timeout=jetstream.connect_timeout_s)
        await connect.ensure(js, jetstream, layout)  # a classification before any node ran
        yield js, layout


async def classify(config: Config, field: str, class_: str | None) -> None:
    """Every node applies it within the bound docs/scaling.md gives."""
    async with _cluster(config) as (js, layout):
        privacy = await ClusterPrivacy.of(js, layout)
        await privacy.classify(field, class_, format_ms(now_ms()), "cli")


async def inbox(
    config: Config, *, source: str | None, include_classified: bool, since: str | None
) -> list[InboxField]:
    async with _cluster(config) as (js, layout):
        privacy = await ClusterPrivacy.of(js, layout)
        return await privacy.inbox(
            source=source, include_classified=include_classified, since=since
        )


async def inventory(config: Config) -> list[InventoryField]:
    async with _cluster(config) as (js, layout):
        return await (await ClusterPrivacy.of(js, layout)).inventory()


async def scan(config: Config, since: str | None) -> AsyncIterator[ScanHit]:
    """The messages of the stream received from `since` that hold a red or an unclassified
    field, in stream order (a hit's `seq` is the stream sequence)."""
    async with _cluster(config) as (js, layout):
        privacy = await ClusterPrivacy.of(js, layout)
        classes = {c.field: c.class_ for c in await privacy.classifications() if c.class_}
        end_seq = (await js.stream_info(layout.stream)).state.last_seq
        after = 0
        while after < end_seq:
            # Named for no warehouse: every accepted message but the copies replay made.
            rows, last_seq = await read_after(
                js, layout, after, min(PAGE_ROWS, end_seq - after), ""
            )
            if last_seq <= after:
                return
            for seq, row in rows:
                if since is not None and row.received_at < since:
                    continue
                hit = hit_of(
                    seq,
                    row.message_id,
                    row.source,
                    row.type,
                    row.received_at,
                    row.payload,
                    classes=classes,
                )
                if hit is not None:
                    yield hit
            after = last_seq
