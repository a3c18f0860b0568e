"""What `cdpd warehouse status` reads from the cluster on the JetStream backend: the messages
stream's last sequence (each warehouse's position, kept in the warehouse itself, is measured
against it) and the node holding each warehouse's lease, the one loading it. The console's
warehouse page and *sync now* read the holder here too."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from cdpd.cluster.connect import connected
from cdpd.cluster.layout import Layout, warehouse_lease_key
from cdpd.cluster.status import stream_last_seq
from cdpd.config import JetStreamConfig


class ClusterPlaces(msgspec.Struct, frozen=True):
    last_seq: int  # of the messages stream (0 before it exists)
    holders: dict[str, str | None]  # warehouse -> the node holding its lease (None: no node)


async def lease_holder(js: JetStreamContext, layout: Layout, warehouse: str) -> str | None:
    """The node named in the warehouse's lease; None when no node holds it."""
    try:
        leases = await js.key_value(layout.leases_bucket)
        entry = await leases.get(warehouse_lease_key(warehouse))
    except NotFoundError:  # no such key (released or expired), or no bucket yet
        return None
    return (entry.value or b"").decode() or None


async def read_places(config: JetStreamConfig, warehouses: Iterable[str]) -> ClusterPlaces:
    """The stream's last sequence and each warehouse's lease holder, over one connection.
    Raises ClusterUnreachable, or a NATS error when the cluster stops answering."""
    layout = Layout.of(config)
    async with connected(config, name="cdpd warehouse status") as client:
        js = client.jetstream()
        last_seq = await stream_last_seq(js, layout)
        holders = {name: await lease_holder(js, layout, name) for name in warehouses}
    return ClusterPlaces(last_seq, holders)
