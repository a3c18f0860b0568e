"""The Profile API on every node of the JetStream backend: the holder of the profiles lease
answers from its live identity stage; every other node from the newest snapshot it has
downloaded from the cluster's object store (polled every `READ_POLL_S`, opened read-only, and
swapped in whole, so a request sees one snapshot).

A snapshot view lags the holder by at most `snapshot_interval_s` + `READ_POLL_S` + the time
to download it. It has no message payloads: the events history is the holder's alone, and
changes (deleting an identifier) are made by the holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import structlog
from nats.js.errors import BucketNotFoundError
from nats.js.object_store import ObjectStore

from cdpd.cluster import connect, snapshots
from cdpd.cluster.connect import ClusterUnreachable
from cdpd.cluster.layout import Layout
from cdpd.cluster.ordered import MESSAGES_TABLE
from cdpd.cluster.snapshots import SnapshotName
from cdpd.config import Config
from cdpd.engage.store import EngageStore
from cdpd.identity import reads
from cdpd.identity import store as identity_store
from cdpd.identity.api import NOT_FOUND, EngageTraits, ProfileApiError
from cdpd.identity.graph import Graph
from cdpd.identity.identifiers import Identifier, Rules
from cdpd.identity.stage import IdentityError, IdentityStage

log = structlog.get_logger("cdpd.cluster")

READ_POLL_S = 5.0
VIEWS_FOLDER = "profiles-read"
NOT_HERE = "this node answers from a snapshot; the node holding the profiles lease makes changes"


@dataclass
class SnapshotView:
    """One downloaded snapshot, open read-only."""

    name: SnapshotName
    folder: Path
    graph: Graph
    reader: aiosqlite.Connection
    engage: EngageStore | None

    async def close(self) -> None:
        await self.reader.close()
        if self.engage is not None:
            await self.engage.close()
        await asyncio.to_thread(shutil.rmtree, self.folder, True)


def _unpacked(archive_path: Path, folder: Path) -> Graph:
    """Unpack the snapshot into `folder` and load its graph."""
    _unpack(archive_path, folder)
    with contextlib.closing(sqlite3.connect(folder / "identity.sqlite3")) as conn:
        return identity_store.load_graph(conn)


def _unpack(archive_path: Path, folder: Path) -> None:
    """The snapshot's files in `folder`, with an empty `messages` file for a reader to attach."""
    snapshots.unpack(
        archive_path,
        {
            "identity.sqlite3": folder / "identity.sqlite3",
            "engage.sqlite3": folder / "engage.sqlite3",
        },
    )
    with contextlib.closing(sqlite3.connect(folder / "messages.sqlite3")) as conn:
        conn.execute(MESSAGES_TABLE)


async def open_view(store: ObjectStore, name: SnapshotName, root: Path) -> SnapshotView:
    folder = root / name.object
    await asyncio.to_thread(shutil.rmtree, folder, True)
    folder.mkdir(parents=True)
    archive_path = folder / "snapshot"
    await snapshots.download(store, name, archive_path)
    graph = await asyncio.to_thread(_unpacked, archive_path, folder)
    archive_path.unlink()
    reader = await aiosqlite.connect(f"file:{folder / 'identity.sqlite3'}?mode=ro", uri=True)
    await reads.attach_outbox(reader, folder / "messages.sqlite3")
    engage_file = folder / "engage.sqlite3"
    engage = await EngageStore.open(engage_file) if engage_file.exists() else None
    return SnapshotView(name, folder, graph, reader, engage)


class NodeProfiles:
    """What the Profile API reads (`cdpd.identity.api.ProfileApi`'s identity): the live stage
    while this node holds the lease, else the newest snapshot view."""

    def __init__(self, config: Config, store: ObjectStore) -> None:
        assert config.identity is not None
        self.rules = Rules(config.identity)
        self._store = store
        self._root = Path(config.storage.data_dir) / VIEWS_FOLDER
        self._classes = {a.key: "audience" for a in config.audiences} | {
            t.key: "computed_trait" for t in config.computed_traits
        }
        self.live: IdentityStage | None = None
        self.view: SnapshotView | None = None
        self._previous: SnapshotView | None = None  # kept open for requests still reading it

    @property
    def graph(self) -> Graph:
        if self.live is not None:
            return self.live.graph
        return self.view.graph if self.view is not None else Graph()

    @property
    def reader(self) -> aiosqlite.Connection | None:
        if self.live is not None:
            return self.live.reader
        if self.view is None:  # no snapshot in the cluster yet, or not downloaded yet
            raise ProfileApiError(404, "not_found", NOT_FOUND)
        return self.view.reader

    @property
    def engage_traits(self) -> EngageTraits | None:
        if self.live is not None:
            return self.live.engage_traits
        return self._view_traits if self.view is not None and self.view.engage else None

    async def _view_traits(self, profile_id: str, trait_class: str) -> dict[str, tuple[Any, int]]:
        assert self.view is not None
        assert self.view.engage is not None
        values = await self.view.engage.values_since(profile_id)
        return {k: v for k, v in values.items() if self._classes.get(k) == trait_class}

    async def delete_identifier(self, pid: str, identifier: Identifier) -> None:
        if self.live is None:
            raise IdentityError(NOT_HERE)
        await self.live.delete_identifier(pid, identifier)

    async def refresh(self) -> None:
        """Open the newest snapshot when it is newer than the view's."""
        newest = await snapshots.newest(self._store)
        if newest is None or (self.view is not None and self.view.name >= newest):
            return
        view = await open_view(self._store, newest, self._root)
        if self._previous is not None:
            await self._previous.close()
        self._previous, self.view = self.view, view
        log.info("profiles_view_opened", snapshot=newest.object)

    async def close(self) -> None:
        for view in (self._previous, self.view):
            if view is not None:
                await view.close()
        self._previous = self.view = None


class NoSnapshot(LookupError):
    """The cluster holds no snapshot of the profiles yet (or cannot be reached)."""


@asynccontextmanager
async def downloaded(config: Config) -> AsyncIterator[tuple[Path, Path]]:
    """The newest snapshot's identity store and an empty messages file, in a temporary folder
    (what `cdpd profiles show|explain` reads on a JetStream node)."""
    jetstream = config.storage.jetstream
    try:
        async with connect.connected(jetstream, name="cdpd profiles") as client:
            js = client.jetstream(timeout=jetstream.connect_timeout_s)
            try:
                store = await js.object_store(Layout.of(jetstream).state_bucket)
            except BucketNotFoundError:
                raise NoSnapshot("the cluster holds no profiles snapshot yet") from None
            name = await snapshots.newest(store)
            if name is None:
                raise NoSnapshot("the cluster holds no profiles snapshot yet")
            with tempfile.TemporaryDirectory() as folder:
                archive_path = Path(folder) / "snapshot"
                await snapshots.download(store, name, archive_path)
                await asyncio.to_thread(_unpack, archive_path, Path(folder))
                yield Path(folder) / "identity.sqlite3", Path(folder) / "messages.sqlite3"
    except ClusterUnreachable as exc:
        raise NoSnapshot(str(exc)) from None
