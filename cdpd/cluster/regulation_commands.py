"""`cdpd regulations create|list|show` on the JetStream backend: each opens a connection to the
cluster, reads or writes the regulations bucket as a node's regulation API does, and closes it.
A regulation created here is taken up by every node's suppression watch and by the holder of
the regulations lease, as one created through the API is."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from nats.js.errors import BucketNotFoundError

from cdpd.cluster.connect import connected
from cdpd.cluster.layout import Layout
from cdpd.cluster.regulations import ClusterRegulations
from cdpd.config import Config
from cdpd.privacy.regulations_store import NewRegulation, RegulationView


class NoRegulations(Exception):
    """The cluster has no regulations bucket: no node has started on it yet."""


async def _nodes_take_it_up(present: Sequence[str], absent: Sequence[str]) -> None:
    """The CLI holds no suppressions of its own: the nodes' watches take the change up."""


@asynccontextmanager
async def _book(config: Config) -> AsyncIterator[ClusterRegulations]:
    jetstream = config.storage.jetstream
    bucket = Layout.of(jetstream).regulations_bucket
    async with connected(jetstream, name="cdpd regulations") as client:
        js = client.jetstream()
        try:
            kv = await js.key_value(bucket)
        except BucketNotFoundError:
            raise NoRegulations(
                f"the cluster has no bucket {bucket} yet: start a node (cdpd serve) first"
            ) from None
        yield ClusterRegulations(config, js, kv, _nodes_take_it_up)


async def create(config: Config, new: NewRegulation) -> None:
    async with _book(config) as book:
        await book.create(new)


async def listing(
    config: Config, status: str | None, source: str | None, count: int
) -> list[RegulationView]:
    async with _book(config) as book:
        return await book.listing(status=status, source=source, after_id=None, count=count)


async def show(config: Config, regulation_id: str) -> RegulationView | None:
    async with _book(config) as book:
        return await book.show(regulation_id)
