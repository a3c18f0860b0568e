"""Identity resolution and Engage on the JetStream backend: both run on one node at a time, the
holder of the `profiles` lease, with the same code and the same SQLite files as on one node.

Taking the lease, a node restores the newest snapshot of the two files from the cluster's
object store (or starts them empty when there is none), copies into its message cache what
Engage has yet to apply, and runs the stages: the identity stage reads the messages stream in
stream-sequence order from its store's own position, Engage follows it and publishes what it
sends through the node's appender (durable in the stream, deduplicated by `messageId`). Every
`snapshot_interval_s`, and when it lets the lease go, the holder stores a snapshot. Losing the
lease stops both stages at once; nothing they wrote since the last snapshot is kept, since
the stages are deterministic consumers of an ordered log: the next holder restores the
snapshot and reads the stream again from the position inside it, to the same state. Engage's
messages sent again meanwhile carry the same `messageId`s and are dropped as duplicates.
What any node asks of the holder (a regulation's deletion, an unmerge) it carries out at its
place in the stream (`cdpd.cluster.profile_command_runner`).
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from nats.js.object_store import ObjectStore

from cdpd.cluster import profiles_sync, snapshots
from cdpd.cluster.lease import RENEW_EVERY_S, Lease, holding
from cdpd.cluster.ordered import MessageCache, StreamConsumer, fresh_cache, position_in
from cdpd.cluster.profile_admin import ProfileAdmin
from cdpd.cluster.profile_command_runner import CommandRunner, HeldReader, PendingCommands
from cdpd.cluster.profile_commands import ProfileCommands
from cdpd.cluster.profile_reads import READ_POLL_S, NodeProfiles
from cdpd.cluster.snapshots import SnapshotName
from cdpd.config import Config, engage_path, identity_path
from cdpd.engage import stage as engage_stage
from cdpd.engage.stage import EngageStage
from cdpd.identity import stage as identity_stage
from cdpd.identity.api import ProfileApi
from cdpd.identity.stage import IdentityStage
from cdpd.model.timestamps import format_ms

if TYPE_CHECKING:
    from cdpd.cluster.node import NodeParts

log = structlog.get_logger("cdpd.cluster")

LEASE_KEY = "profiles"
CACHE_FILE = "stream_messages.sqlite3"
RELEASE_CHECK_S = 0.2  # how soon the stages stop after the node is told to
ENGAGE_POSITION = "SELECT value FROM engage_position WHERE name = 'resolutions'"


def state_files(config: Config) -> dict[str, Path]:
    """The files a snapshot holds, by their name in it; Engage's first (see `copy_files`)."""
    files = {}
    if config.audiences or config.computed_traits:
        files["engage.sqlite3"] = engage_path(config)
    files["identity.sqlite3"] = identity_path(config)
    return files


class ProfilesLeader:
    """The profiles stages on one node: wait for the lease, then restore, run and snapshot
    while it is held. A service for `cdpd.supervise` (`run(stop)`)."""

    def __init__(
        self, parts: NodeParts, lease: Lease, store: ObjectStore, admin: ProfileAdmin
    ) -> None:
        assert parts.config.identity is not None
        self._parts = parts
        self.profiles = NodeProfiles(parts.config, store)
        self._api = ProfileApi(parts.config.identity, self.profiles)
        self._admin = admin
        self._config = parts.config
        self.lease = lease
        self._store = store
        self._files = state_files(parts.config)
        self._data_dir = Path(parts.config.storage.data_dir)
        self.identity: IdentityStage | None = None  # while the lease is held
        self.engage: EngageStage | None = None
        self.commands: CommandRunner | None = None
        self.snapshots_stored = 0
        self._stored_files: tuple[tuple[int, int], ...] = ()  # as they were at the last one
        self._stored_name: SnapshotName | None = None
        self._snapshotting = asyncio.Lock()  # the timer's and a command's, one at a time

    def public_routes(self) -> list[web.RouteDef]:
        """The Profile API, answered on every node (see cdpd/cluster/profile_reads.py)."""
        return self._api.routes()

    def routes(self) -> list[web.RouteDef]:
        """The admin API's unmerge, on every node (carried out by the lease holder)."""
        return self._admin.routes()

    async def run(self, stop: asyncio.Event) -> None:
        polled_at = -READ_POLL_S
        while not stop.is_set():
            if await self.lease.acquire():
                async with holding(self.lease, self._parts.clock):
                    await self._lead(stop)
                polled_at = -READ_POLL_S
                continue
            if time.monotonic() - polled_at >= READ_POLL_S:
                polled_at = time.monotonic()
                await self._refresh_view()
            await self._parts.clock.wait(stop, RENEW_EVERY_S)

    async def _refresh_view(self) -> None:
        try:
            await self.profiles.refresh()
        except Exception as exc:  # nats-py raises several unrelated types for one lost link
            log.warning("profiles_view_failed", error=repr(exc))

    async def _lead(self, stop: asyncio.Event) -> None:
        term = self.lease.revision
        self._stored_files, self._stored_name = (), None
        await self._restore()
        identity_file = self._files["identity.sqlite3"]
        await asyncio.to_thread(profiles_sync.number_changes_from, identity_file, term)
        async with self._stages(term) as (identity, engage, cache, commands):
            self.identity, self.engage, self.commands = identity, engage, commands
            self.profiles.live = identity
            stages_stop = asyncio.Event()
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(
                        self._parts.supervised("identity", identity.run, stages_stop),
                        name="identity",
                    )
                    if engage is not None:
                        group.create_task(
                            self._parts.supervised("engage", engage.run, stages_stop),
                            name="engage",
                        )
                    if self._config.warehouses:
                        group.create_task(
                            self._parts.supervised("profiles-sync", self._sync, stages_stop),
                            name="profiles-sync",
                        )
                    group.create_task(
                        self._parts.supervised("profile-commands", commands.run, stages_stop),
                        name="profile-commands",
                    )
                    group.create_task(
                        self._snapshot_while_held(stop, term, cache), name="profiles-snapshots"
                    )
                    try:
                        await self._until_released(stop)
                    finally:  # stopped at once, even while a snapshot is being uploaded
                        stages_stop.set()
                        if engage is not None:
                            engage.wake.set()
                if self.lease.held:  # a clean release: the next holder starts from here
                    await self._snapshot(term)
            finally:
                self.identity = self.engage = self.profiles.live = self.commands = None

    async def _until_released(self, stop: asyncio.Event) -> None:
        """Until the node stops or the lease is lost."""
        while not stop.is_set() and self.lease.held:
            await self._parts.clock.wait(self.lease.lost, RELEASE_CHECK_S)

    async def _sync(self, stop: asyncio.Event) -> None:
        await profiles_sync.sync_while_running(self._config, self._parts.clock, stop)

    async def _snapshot_while_held(
        self, stop: asyncio.Event, term: int, cache: MessageCache
    ) -> None:
        interval_s = self._config.storage.jetstream.snapshot_interval_s
        while True:
            waited_s = 0.0
            while waited_s < interval_s:
                if stop.is_set() or not self.lease.held:
                    return
                step_s = min(RENEW_EVERY_S, interval_s - waited_s)
                await self._parts.clock.wait(stop, step_s)
                waited_s += step_s
            await self._snapshot(term)
            await self._prune(cache)

    async def _prune(self, cache: MessageCache) -> None:
        identity = self.identity
        if identity is None or self._config.identity is None:
            return
        applied = identity.committed_seq
        if self.engage is not None:
            applied = min(applied, self.engage.position.resolutions)
        days = self._config.identity.events_history_days
        await cache.prune(applied, format_ms(self._parts.clock.now_ms() - days * 86_400_000))

    async def _restore(self) -> None:
        started = time.monotonic()
        name = await snapshots.newest(self._store)
        with tempfile.TemporaryDirectory(dir=self._data_dir) as folder:
            archive_path = None
            if name is not None:
                archive_path = Path(folder) / "snapshot"
                await snapshots.download(self._store, name, archive_path)
            await asyncio.to_thread(snapshots.unpack, archive_path, self._files)
        log.info(
            "profiles_restored",
            term=None if name is None else name.term,
            position=0 if name is None else name.position,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _snapshot(self, term: int, *, vacuum: bool = False) -> SnapshotName | None:
        """Copy the files, and store the copy unless the lease was lost meanwhile; the
        snapshot holding what is committed now (None when none could be stored). With
        `vacuum` (after a command: a deletion), the copies keep nothing deleted in free pages,
        and a snapshot is stored even if nothing was committed since the last one."""
        async with self._snapshotting:
            return await self._store_snapshot(term, vacuum)

    async def _store_snapshot(self, term: int, vacuum: bool) -> SnapshotName | None:
        started = time.monotonic()
        files = self._file_states()
        if files == self._stored_files and not vacuum:
            return self._stored_name  # nothing committed since the last snapshot
        try:
            with tempfile.TemporaryDirectory(dir=self._data_dir) as folder:
                archive_path = Path(folder) / "snapshot.tar.zst"
                position = await asyncio.to_thread(
                    snapshots.copy_files, self._files, archive_path, vacuum=vacuum
                )
                copied_s = time.monotonic() - started
                if not await self.lease.confirmed():
                    log.warning("profiles_snapshot_dropped", reason="the lease is not ours")
                    return None
                name = SnapshotName(term, position).after(self._stored_name)
                size = await snapshots.upload(self._store, name, archive_path)
            await snapshots.prune(self._store)
        except Exception as exc:  # nats-py raises several unrelated types for one lost link
            log.warning("profiles_snapshot_failed", error=repr(exc))
            return None
        self.snapshots_stored += 1
        self._stored_files, self._stored_name = files, name
        log.info(
            "profiles_snapshot_stored",
            snapshot=name.object,
            bytes=size,
            copy_seconds=round(copied_s, 3),
            seconds=round(time.monotonic() - started, 3),
        )
        return name

    def _file_states(self) -> tuple[tuple[int, int], ...]:
        """Modification time and size of each file and its WAL: every commit changes one."""
        paths = [p.with_name(p.name + end) for p in self._files.values() for end in ("", "-wal")]
        stats = [p.stat() if p.exists() else None for p in paths]
        return tuple((s.st_mtime_ns, s.st_size) if s else (0, 0) for s in stats)

    @asynccontextmanager
    async def _stages(
        self, term: int
    ) -> AsyncIterator[tuple[IdentityStage, EngageStage | None, MessageCache, CommandRunner]]:
        parts = self._parts
        identity_file = self._files["identity.sqlite3"]
        identity_seq = position_in(identity_file, snapshots.IDENTITY_POSITION)
        pending = PendingCommands(parts.js, parts.layout, identity_file)
        try:
            await pending.fetch()  # before the identity stage reads past the first one's place
            async with fresh_cache(self._data_dir / CACHE_FILE) as cache:
                await self._fill(cache, identity_seq)
                consumer = StreamConsumer(parts.js, parts.layout, cache)
                async with (
                    identity_stage.opened_on(
                        self._config,
                        HeldReader(consumer, pending),
                        self._mirror,
                        lambda: consumer.end_seq,
                        cache.path,
                    ) as identity,
                    self._engage(identity, cache.path) as engage,
                ):
                    commands = CommandRunner(
                        parts.js,
                        parts.layout,
                        pending,
                        (identity, engage, cache),
                        self._store,
                        functools.partial(self._snapshot, term, vacuum=True),
                        parts.clock,
                    )
                    yield identity, engage, cache, commands
        finally:
            await pending.close()

    @asynccontextmanager
    async def _engage(
        self, identity: IdentityStage, cache_path: Path
    ) -> AsyncIterator[EngageStage | None]:
        if "engage.sqlite3" not in self._files:
            yield None
            return
        parts = self._parts
        async with engage_stage.opened(
            self._config, identity, parts.appender, parts.clock, cache_path
        ) as engage:
            yield engage

    async def _fill(self, cache: MessageCache, identity_seq: int) -> None:
        """The messages Engage has yet to apply, which the identity stage will not read."""
        engage_file = self._files.get("engage.sqlite3")
        if engage_file is None:
            return
        engage_seq = position_in(engage_file, ENGAGE_POSITION)
        await cache.fill(self._parts.js, self._parts.layout, engage_seq, identity_seq)

    async def _mirror(self, seq: int) -> None:
        """The identity stage's position, for operators (`nats kv get`); the truth is in the
        store (and its snapshots)."""
        kv = await self._parts.js.key_value(self._parts.layout.positions_bucket)
        await kv.put("identity", str(seq).encode())


@asynccontextmanager
async def profiles_stage(parts: NodeParts) -> AsyncIterator[ProfilesLeader]:
    """The profiles leader service, stopped (its stages' batches committed, a last snapshot
    stored, the lease released) when the block exits."""
    kv = await parts.js.key_value(parts.layout.leases_bucket)
    store = await snapshots.state_store(
        parts.js, parts.layout, parts.config.storage.jetstream.replicas
    )
    admin = ProfileAdmin(
        parts.config.admin.resolved_token(),
        ProfileCommands(parts.js, parts.layout),
        kv,
        LEASE_KEY,
    )
    leader = ProfilesLeader(parts, Lease(kv, LEASE_KEY, parts.node_name), store, admin)
    parts.profiles = leader.profiles
    stop = asyncio.Event()
    running = parts.tasks.create_task(
        parts.supervised("profiles", leader.run, stop), name="profiles"
    )
    try:
        yield leader
    finally:
        stop.set()
        await asyncio.gather(running, return_exceptions=True)
        await leader.profiles.close()
