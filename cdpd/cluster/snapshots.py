"""Snapshots of the profiles stages' SQLite files (the identity store and Engage's) in the
cluster's object store (`<STREAM>_state`), one object per snapshot: a zstd-compressed tar of
both files (`snapshot_archive`; older snapshots, plain tars, are still read).

An object is named `profiles.<term>.<position>[.<revision>]`: the term is the revision of the
profiles lease when its holder acquired it (it grows with every acquisition), the position the
identity store's own (the last stream sequence it resolved), the revision counts the
snapshots stored again at one position (Engage's later changes, a command's). The newest
snapshot is the one with the highest term, then position, then revision. So a former holder
that has not noticed yet that it lost the lease, and uploads late, can never make a node that
takes the lease over restore older state than the newer holder stored: the newer holder's
term is higher.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Mapping
from pathlib import Path

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectMetaOptions, ObjectStoreConfig, StorageType
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from cdpd.cluster import snapshot_archive
from cdpd.cluster.layout import Layout
from cdpd.cluster.ordered import position_in

log = structlog.get_logger("cdpd.cluster")

KEEP = 3  # snapshots kept; older ones are deleted after each upload
# Each chunk is one replicated publish awaited before the next: fewer, larger chunks upload
# faster (the library's default is 128 KiB). Below nats-server's default max_payload (1 MiB).
CHUNK_BYTES = 512 * 1024
PREFIX = "profiles"
ARCHIVE_DESCRIPTION = "tar.zst"  # for operators (`nats object info`); readers look at the bytes
IDENTITY_POSITION = "SELECT seq FROM position WHERE name = 'outbox'"


class SnapshotName(msgspec.Struct, frozen=True, order=True):
    term: int
    position: int
    # Counts the snapshots a holder stored at one position (Engage's later changes, a
    # command's): each is newer than the one before, so every node sees it is.
    revision: int = 0

    @property
    def object(self) -> str:
        name = f"{PREFIX}.{self.term:020d}.{self.position:020d}"
        return name if self.revision == 0 else f"{name}.{self.revision:010d}"

    @classmethod
    def parse(cls, name: str) -> SnapshotName | None:
        parts = name.split(".")
        if len(parts) not in (3, 4) or parts[0] != PREFIX:
            return None
        if not all(p.isdigit() for p in parts[1:]):
            return None
        return cls(*(int(p) for p in parts[1:]))

    def after(self, stored: SnapshotName | None) -> SnapshotName:
        """This name, or the next revision of `stored` when it names the same place."""
        if stored is None or (stored.term, stored.position) != (self.term, self.position):
            return self
        return SnapshotName(self.term, self.position, stored.revision + 1)


def copy_files(files: Mapping[str, Path], archive_path: Path, *, vacuum: bool = False) -> int:
    """Copy each SQLite file with SQLite's online backup (one read transaction each: a
    committed state) in the mapping's order, and pack the copies into a compressed archive at
    `archive_path` (`snapshot_archive`); returns the identity store's position in the copy.
    Engage's file comes first: it follows the identity store, so copied before it, it is never
    ahead of it. With `vacuum`, each copy is rebuilt before it is packed: the backup copies
    free pages as they are, with what was deleted in them."""
    with tempfile.TemporaryDirectory(dir=archive_path.parent) as folder:
        copies = {}
        for name, path in files.items():
            if not path.exists():
                continue
            copy = copies[name] = Path(folder) / name
            with (
                contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as source,
                contextlib.closing(sqlite3.connect(copy)) as target,
            ):
                source.backup(target)
                if vacuum:
                    target.execute("VACUUM")
        snapshot_archive.pack(copies, archive_path)
        return position_in(Path(folder) / "identity.sqlite3", IDENTITY_POSITION)


def unpack(archive_path: Path | None, files: Mapping[str, Path]) -> None:
    """Put each file of the snapshot (compressed or, stored before, a plain tar) in place (what
    was there before goes, with its WAL); with no snapshot, every file goes: the stages start
    empty."""
    with tempfile.TemporaryDirectory(dir=next(iter(files.values())).parent) as folder:
        if archive_path is not None:
            snapshot_archive.extract(archive_path, Path(folder))
        for name, path in files.items():
            for stale in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                stale.unlink(missing_ok=True)
            restored = Path(folder) / name
            if restored.exists():
                os.replace(restored, path)
            else:
                path.unlink(missing_ok=True)


async def state_store(js: JetStreamContext, layout: Layout, replicas: int) -> ObjectStore:
    """The object store of snapshots, created the first time."""
    config = ObjectStoreConfig(
        description="cdpd snapshots of the profiles stages' files",
        storage=StorageType.FILE,
        replicas=replicas,
    )
    return await js.create_object_store(layout.state_bucket, config=config)


async def names(store: ObjectStore) -> list[SnapshotName]:
    """Every snapshot in the store, oldest first."""
    try:
        infos = await store.list(ignore_deletes=True)
    except NotFoundError:
        return []
    found = [SnapshotName.parse(info.name or "") for info in infos if not info.deleted]
    return sorted(name for name in found if name is not None)


async def newest(store: ObjectStore) -> SnapshotName | None:
    found = await names(store)
    return found[-1] if found else None


async def upload(store: ObjectStore, name: SnapshotName, archive_path: Path) -> int:
    """Store the archive as one object (its chunks are read off the event loop); returns its
    size."""
    meta = ObjectMeta(
        name=name.object,
        description=ARCHIVE_DESCRIPTION,
        options=ObjectMetaOptions(max_chunk_size=CHUNK_BYTES),
    )
    with archive_path.open("rb") as data:
        info = await store.put(name.object, data, meta=meta)
    return int(info.size or 0)


async def download(store: ObjectStore, name: SnapshotName, archive_path: Path) -> None:
    with archive_path.open("wb") as out:
        await store.get(name.object, writeinto=out)


async def prune(store: ObjectStore, keep: int = KEEP) -> None:
    """Delete all but the newest `keep` snapshots."""
    for name in (await names(store))[:-keep]:
        with contextlib.suppress(NotFoundError):
            await store.delete(name.object)


async def prune_before(store: ObjectStore, kept: SnapshotName) -> None:
    """Delete every snapshot older than `kept` (they hold what a deletion erased)."""
    for name in await names(store):
        if name < kept:
            with contextlib.suppress(NotFoundError):
                await store.delete(name.object)
