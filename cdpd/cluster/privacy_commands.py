"""`cdpd privacy inbox|classify|inventory` on the JetStream backend: the cluster's buckets,
read and written the way a node does (cdpd/cluster/privacy_store.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cdpd.cluster import connect
from cdpd.cluster.connect import ClusterUnreachable
from cdpd.cluster.layout import Layout
from cdpd.cluster.privacy_store import ClusterPrivacy
from cdpd.config import Config
from cdpd.model.timestamps import format_ms, now_ms
from cdpd.privacy.store import InboxField, InventoryField

__all__ = ["ClusterUnreachable", "classify", "inbox", "inventory"]


@asynccontextmanager
async def _privacy(config: Config) -> AsyncIterator[ClusterPrivacy]:
    jetstream = config.storage.jetstream
    layout = Layout.of(jetstream)
    async with connect.connected(jetstream, name="cdpd privacy") as client:
        js = client.jetstream(timeout=jetstream.connect_timeout_s)
        await connect.ensure(js, jetstream, layout)  # a classification before any node ran
        yield await ClusterPrivacy.of(js, layout)


async def classify(config: Config, field: str, class_: str | None) -> None:
    """Every node applies it within the bound docs/scaling.md gives."""
    async with _privacy(config) as privacy:
        await privacy.classify(field, class_, format_ms(now_ms()), "cli")


async def inbox(
    config: Config, *, source: str | None, include_classified: bool, since: str | None
) -> list[InboxField]:
    async with _privacy(config) as privacy:
        return await privacy.inbox(
            source=source, include_classified=include_classified, since=since
        )


async def inventory(config: Config) -> list[InventoryField]:
    async with _privacy(config) as privacy:
        return await privacy.inventory()
