"""The identity stage: reads the outbox in order and resolves every message into profiles.

It is an outbox consumer (`cdpd.outbox.consumers.Consumer`) whose durable position lives in its
own store, beside the profiles it covers, and moves in the same transaction as them: a kill -9
loses at most an uncommitted batch, which is read again (nothing is resolved twice, nothing is
skipped). The position is mirrored into the outbox's `consumers` table (kind `identity`) for
retention, `cdpd outbox stats` and `/metrics`. The in-memory graph is loaded from the store
at each start, so a restart after a failure resumes from what was committed.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec
import structlog

from cdpd.config import Config, identity_path
from cdpd.identity import reads, store
from cdpd.identity.graph import Graph, Resolution
from cdpd.identity.identifiers import Identifier, Rules
from cdpd.identity.resolve import resolve
from cdpd.model.timestamps import format_ms, now_ms, parse_ms
from cdpd.outbox import consumers
from cdpd.outbox.consumers import Consumer, Message, OrderedReader

log = structlog.get_logger("cdpd.identity")

T = TypeVar("T")
CONSUMER_NAME = "identity"
CHUNK_MESSAGES = 20  # resolved between yields to the event loop (about a millisecond)
MIRROR_INTERVAL_S = 1.0
LOAD_WAIT_S = 60.0
_payload = msgspec.json.Decoder(dict[str, Any])


class IdentityError(Exception):
    """A request the identity store refuses (the Profile API turns it into a 400)."""


def no_one_suppressed(_source: str) -> frozenset[str]:
    return frozenset()


def resolve_messages(
    graph: Graph,
    rules: Rules,
    messages: Sequence[Message],
    suppressed: Callable[[str], frozenset[str]] = no_one_suppressed,
) -> list[Resolution]:
    """Resolve and apply `messages` in order (pure apart from `graph`); `suppressed` gives the
    user ids suppressed for a source."""
    done = []
    for message in messages:
        resolution = resolve(
            graph,
            _payload.decode(message.payload),
            rules,
            seq=message.seq,
            message_id=message.message_id,
            source=message.source,
            at_ms=parse_ms(message.received_at),
            suppressed=suppressed(message.source),
        )
        graph.apply(resolution)
        done.append(resolution)
    return done


class IdentityStage:
    """Owns the identity store's only write connection and the graph in memory."""

    def __init__(
        self,
        config: Config,
        conn: sqlite3.Connection,
        consumer: OrderedReader,
        mirror: Callable[[int], Any],
        end_seq: Callable[[], int],
        reader: aiosqlite.Connection | None = None,
        suppressed: Callable[[str], frozenset[str]] = no_one_suppressed,
    ) -> None:
        assert config.identity is not None
        # Engage follows deletions through the `forgotten` record; without Engage no record is
        # kept, so a deleted profile's id is held nowhere.
        self._record_forgotten = bool(config.audiences or config.computed_traits)
        self.rules = Rules(config.identity)
        self.batch_messages = config.identity.batch_messages
        self._conn = conn
        # The store's one writer thread: every write is a blocking call run there, a whole
        # batch per hop, never on the event loop.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="identity-writer")
        self.reader = reader  # read-only, for the Profile API and the CLI
        self.consumer = consumer
        self._mirror = mirror
        self._mirrored = -1
        self._mirrored_at = 0.0
        self.graph = Graph()
        self._end_seq = end_seq
        self.lock = asyncio.Lock()  # one change at a time: batches, forgets, deletions
        self.resolved = 0
        self.committed_seq = 0  # everything up to here is resolved and in the store
        self._progress = asyncio.Condition()
        self._pending: tuple[asyncio.Future[None], int, int] | None = None
        self._suppressed = suppressed
        self._loaded = asyncio.Event()  # the graph is read from the store (forgets wait)
        # Seqs a regulation deleted from the outbox: a batch read before the deletion does not
        # resolve them (it would bring back a profile the regulation forgets).
        self._erased: set[int] = set()
        self.followers: list[asyncio.Event] = []  # set on every commit and forget (Engage)
        # Engage's traits of a profile by class (the Profile API's class=audience|computed_trait).
        self.engage_traits: Callable[[str, str], Awaitable[dict[str, tuple[Any, int]]]] | None = (
            None
        )

    async def run(self, stop: asyncio.Event) -> None:
        async with self.lock:
            self.graph = await self._write(store.load_graph, self._conn)
            seq = await self._write(store.position, self._conn)
            self._loaded.set()
        await self.consumer.start(from_seq=seq)
        self.consumer.seq = self.committed_seq = seq  # the store's own position is the truth
        await self._progressed()
        try:
            while not stop.is_set():
                if not await self.step():
                    await self._mirror_position(force=True)
                    await self.consumer.wait(stop, poll_s=1.0)
        finally:
            try:
                await self._committed()  # the batch being written is committed before stopping
            finally:
                await self.consumer.close()

    @property
    def lag_messages(self) -> int:
        """Messages committed to the outbox and not resolved yet."""
        return max(0, self._end_seq() - self.committed_seq)

    def profile_counts(self) -> dict[str, int]:
        return dict(self.graph.live)

    async def step(self) -> bool:
        """Resolve the next batch and hand it to the writer thread, which writes it while the
        following batch is resolved; False when there was nothing to read."""
        batch = await self.consumer.read(self.batch_messages)
        if not batch:
            await self._committed()
            return False
        async with self.lock:
            resolutions = []
            for chunk in _chunks(self._not_erased(batch), CHUNK_MESSAGES):
                resolutions += resolve_messages(self.graph, self.rules, chunk, self._suppressed)
                await asyncio.sleep(0)
            planned = store.plan(self.graph, resolutions, batch[-1].seq)
            await self._committed()  # one batch in flight at most
            # Handed over under the lock: a forget or unmerge that changes the graph after
            # this batch also writes after it (the writer thread runs its work in order).
            written = asyncio.get_running_loop().run_in_executor(
                self._writer, store.write, self._conn, planned
            )
            self._pending = (written, batch[-1].seq, len(batch))
        self.consumer.seq = batch[-1].seq  # where reading continues
        return True

    def _not_erased(self, batch: Sequence[Message]) -> Sequence[Message]:
        if not self._erased:
            return batch
        kept = [m for m in batch if m.seq not in self._erased]
        self._erased.difference_update(s for s in list(self._erased) if s <= batch[-1].seq)
        return kept

    def erased(self, seqs: Collection[int]) -> None:
        """The outbox no longer holds these messages: never resolve them (called before they
        are deleted, so that a batch already read skips them too)."""
        self._erased.update(s for s in seqs if s > self.committed_seq)

    async def _committed(self) -> None:
        """Wait for the batch being written, if any; then it counts as resolved."""
        if self._pending is None:
            return
        written, seq, count = self._pending
        self._pending = None
        await written
        self.committed_seq = seq
        self.resolved += count
        await self._progressed()
        await self._mirror_position(force=False)

    async def _mirror_position(self, *, force: bool) -> None:
        seq = self.committed_seq
        now = time.monotonic()
        if seq == self._mirrored or (not force and now - self._mirrored_at < MIRROR_INTERVAL_S):
            return
        await self._mirror(seq)
        self._mirrored, self._mirrored_at = seq, now

    async def _write(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, call, *args)

    def close(self) -> None:
        self._writer.shutdown(wait=True)

    async def _progressed(self) -> None:
        for follower in self.followers:
            follower.set()
        async with self._progress:
            self._progress.notify_all()

    async def wait_resolved(self, seq: int) -> None:
        """Until every message up to `seq` is resolved (and committed)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.committed_seq >= seq)

    # -- what the Profile API and the privacy stage call ---------------------------------------

    async def forget_users(self, user_ids: Sequence[str]) -> int:
        """A deletion regulation's target: forget the profile of each user, in one write;
        returns the rows removed from the store."""
        return (await self._forget([("user_id", u) for u in user_ids], "users"))[1]

    async def forget_user(self, user_id: str) -> list[str]:
        """Delete the profile holding `user_id` (and every profile merged into it) with its
        identifiers, traits, links, resolutions and merge history; returns the profile ids
        deleted (empty when no profile has the id)."""
        return await self.forget(("user_id", user_id))

    async def forget(self, identifier: Identifier, collection: str = "users") -> list[str]:
        return (await self._forget([identifier], collection))[0]

    async def _forget(
        self, identifiers: Sequence[Identifier], collection: str
    ) -> tuple[list[str], int]:
        # A regulation taken up at start must not look in a graph not loaded yet (it would
        # find no profile and call the deletion done); a stage that never loads fails it, to
        # be tried again.
        async with asyncio.timeout(LOAD_WAIT_S):
            await self._loaded.wait()
        async with self.lock:
            gone = self._remove(identifiers, collection)
            if not gone:
                return [], 0
            forget = functools.partial(store.delete_profiles, record=self._record_forgotten)
            removed = await self._write(forget, self._conn, gone)
        await self._progressed()  # Engage follows the record of forgotten profiles
        log.info("profile_forgotten", profiles=len(gone), rows=removed)
        return gone, removed

    def _remove(self, identifiers: Sequence[Identifier], collection: str) -> list[str]:
        """Take the profiles owning `identifiers` out of the graph; the profile ids gone."""
        owners = {self.graph.owner(collection, i) for i in identifiers} - {None}
        pids = {self.graph.canonical(o) for o in owners if o is not None}
        for pid in pids:  # an unmerge's record of their identifiers goes too
            self.graph.separated -= {(collection, i) for i in self.graph.profiles[pid].identifiers}
        return self.graph.remove_all(pids)

    async def unmerge(self, identifier: Identifier, collection: str = "users") -> list[str]:
        """Split `identifier` off its profile: the profile is rebuilt by resolving its messages
        again, in order, with `identifier` never allowed to merge with another profile (now or
        later). Returns the canonical profiles its former identifiers now belong to. Refused
        (IdentityError) when the outbox no longer holds every message of the profile."""
        async with self.lock:
            await self._committed()
            owner = self.graph.owner(collection, identifier)
            if owner is None:
                raise IdentityError(f"no profile has {identifier[0]}:{identifier[1]}")
            pid = self.graph.canonical(owner)
            members = [p for p in self.graph.profiles if self.graph.canonical(p) == pid]
            assert self.reader is not None
            rows, resolved = await reads.replayable(self.reader, members)
            if len(rows) < resolved:
                raise IdentityError(
                    f"{resolved - len(rows)} messages of this profile are no longer in the"
                    " outbox, so it cannot be rebuilt"
                )
            identifiers = list(self.graph.profiles[pid].identifiers)
            self.graph.separated.add((collection, identifier))
            gone = self.graph.remove(pid)
            replayed = resolve_messages(self.graph, self.rules, [Message(*r) for r in rows])
            planned = store.plan(self.graph, replayed, self.committed_seq)
            first = store.unmerge_statements(gone, (collection, identifier), format_ms(now_ms()))
            await self._write(
                store.write, self._conn, store.Batch(first + planned.statements, planned.to_seq)
            )
        log.info("profile_unmerged", type=identifier[0], messages=len(rows))
        owners = {self.graph.owner(collection, i) for i in identifiers} - {None}
        return sorted({self.graph.canonical(o) for o in owners if o is not None})

    async def record_position(self, name: str, seq: int) -> None:
        """Keep another position beside the profiles, written after every change before it."""
        async with self.lock:
            await self._write(store.set_position, self._conn, name, seq)

    async def delete_identifier(self, pid: str, identifier: Identifier) -> None:
        """Segment's Delete Profile Identifier: never a profile's last `user_id`, never a
        `group_id` (raises IdentityError)."""
        async with self.lock:
            profile = self.graph.profiles[self.graph.canonical(pid)]
            kind = identifier[0]
            if kind == "group_id":
                raise IdentityError("group_id identifiers cannot be deleted")
            if identifier not in profile.identifiers:
                raise IdentityError(f"the profile has no {kind} {identifier[1]!r}")
            if kind == "user_id" and profile.count("user_id", None) <= 1:
                raise IdentityError("the last user_id of a profile cannot be deleted")
            self.graph.drop_identifier(profile.id, profile.collection, identifier)
            await self._write(
                store.delete_identifier, self._conn, profile.id, profile.collection, identifier
            )


def _chunks(items: Sequence[Message], size: int) -> Iterator[Sequence[Message]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@asynccontextmanager
async def opened(
    config: Config,
    outbox_path: Path,
    transact: Any,
    end_seq: Callable[[], int],
    suppressed: Callable[[str], frozenset[str]] = no_one_suppressed,
) -> Any:
    """The identity stage with its store open, reading the SQLite outbox; closed on exit."""
    consumer = Consumer(CONSUMER_NAME, CONSUMER_NAME, outbox_path, transact, end_seq)

    async def mirror(seq: int) -> None:
        await transact(lambda c: consumers.mirror(c, CONSUMER_NAME, CONSUMER_NAME, seq))

    async with opened_on(config, consumer, mirror, end_seq, outbox_path, suppressed) as stage:
        yield stage


@asynccontextmanager
async def opened_on(
    config: Config,
    consumer: OrderedReader,
    mirror: Callable[[int], Any],
    end_seq: Callable[[], int],
    messages_path: Path,
    suppressed: Callable[[str], frozenset[str]] = no_one_suppressed,
) -> Any:
    """The identity stage with its store open, reading from `consumer` (the outbox's interface);
    `messages_path` holds the messages' payloads in the outbox's `messages` layout."""
    with store.connect(identity_path(config)) as conn:
        async with store.connect_reader(identity_path(config)) as reader:
            await reads.attach_outbox(reader, messages_path)
            stage = IdentityStage(config, conn, consumer, mirror, end_seq, reader, suppressed)
            try:
                yield stage
            finally:
                stage.close()
