"""The profiles lease holder's side of the commands (`cdpd.cluster.profile_commands`): read
them from the commands stream past the position its identity store keeps (`commands`, in the
`position` table, so a snapshot carries it to the next holder), hold the identity stage at
each one's `after_seq`, carry it out there, store a snapshot holding its effect (after a
deletion, every older snapshot goes: they hold the erased profiles), and write its outcome.

A holder that stops before the snapshot leaves the command past the stored position: the next
holder restores the snapshot, resolves the stream again up to the same `after_seq` and carries
it out again (forgetting twice removes nothing the second time).

The commands are read through an ephemeral consumer of the holder's own (in memory, acknowledging
nothing: the position is the identity store's), started past that position when the holder
takes the lease. An idle holder waits on one long fetch of up to `COMMAND_WAIT_S`, which the
server answers as soon as a command is stored; when one ends empty, the stream's last sequence
shows whether the consumer missed a command (lost with a server, or stored just as the fetch
ended), and a new consumer then starts past the last command seen.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import APIError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from cdpd.clock import Clock
from cdpd.cluster import snapshots
from cdpd.cluster.browse import forget, reading
from cdpd.cluster.layout import Layout
from cdpd.cluster.ordered import MessageCache, StreamConsumer, position_in
from cdpd.cluster.profile_commands import (
    DONE,
    FORGET,
    REFUSED,
    Outcome,
    ProfileCommand,
    command_of,
    encode,
    take,
)
from cdpd.cluster.snapshots import SnapshotName
from cdpd.engage.stage import EngageStage
from cdpd.identity.stage import IdentityError, IdentityStage
from cdpd.outbox.consumers import Message
from cdpd.waits import first_of

log = structlog.get_logger("cdpd.cluster")

POSITION_NAME = "commands"
COMMANDS_POSITION = "SELECT seq FROM position WHERE name = 'commands'"  # POSITION_NAME
POLL_S = 0.2  # how often a command waiting for the identity stage looks again
COMMAND_WAIT_S = 5.0  # an idle holder's fetch: how long the server holds it open
FETCH_TIMEOUT_S = 5.0  # for commands the consumer said it holds
CONSUMER_INACTIVE_S = 60.0  # a holder gone without deleting its consumer leaves it this long
HELD_POLL_S = 0.2  # how often a held identity stage looks again
SNAPSHOT_RETRY_S = 1.0
StoreSnapshot = Callable[[], Awaitable[SnapshotName | None]]


class PendingCommands:
    """The commands past the identity store's position, in the stream's order."""

    def __init__(self, js: JetStreamContext, layout: Layout, identity_file: Path) -> None:
        self._js = js
        self._layout = layout
        self._seen_seq = position_in(identity_file, COMMANDS_POSITION)
        self._sub: JetStreamContext.PullSubscription | None = None
        self._stored = 0  # commands stored past the last one seen, as the consumer last said
        self.queue: deque[tuple[int, ProfileCommand]] = deque()
        self.released = asyncio.Event()  # set after each command carried out

    def hold_seq(self) -> int | None:
        """Where the identity stage stops reading until the next command is carried out."""
        return self.queue[0][1].after_seq if self.queue else None

    async def fetch(self, wait_s: float = 0.0) -> None:
        """Add the commands stored since the last look; with none stored, wait up to `wait_s`
        for the next one."""
        try:
            await self._fetch(wait_s)
        except Exception:
            await self.close()  # whatever went wrong, the next look starts a consumer again
            raise

    async def _fetch(self, wait_s: float) -> None:
        sub = self._sub or await self._open()
        if not self._stored and (wait_s <= 0 or not await self._next(sub, wait_s)):
            return
        while self._stored:
            try:
                batch = await sub.fetch(self._stored, timeout=FETCH_TIMEOUT_S)
            except TimeoutError:  # fewer than it said (expired meanwhile): start again
                await self.close()
                return
            for message in batch:
                self._add(message)

    async def close(self) -> None:
        """Delete the consumer (else the server does, `CONSUMER_INACTIVE_S` after its use)."""
        if self._sub is None:
            return
        sub, self._sub, self._stored = self._sub, None, 0
        try:
            await forget(self._js, self._layout.commands_stream, sub)
        except Exception as exc:  # nats-py raises several unrelated types for one lost link
            log.warning("profile_commands_consumer_left", error=repr(exc))

    async def _open(self) -> JetStreamContext.PullSubscription:
        """A consumer from just past the last command seen."""
        config = reading(
            DeliverPolicy.BY_START_SEQUENCE,
            start_seq=self._seen_seq + 1,
            inactive_s=CONSUMER_INACTIVE_S,
        )
        self._sub = await self._js.pull_subscribe(
            self._layout.profile_commands_subject,
            stream=self._layout.commands_stream,
            config=config,
        )
        self._stored = (await self._sub.consumer_info()).num_pending or 0
        return self._sub

    async def _next(self, sub: JetStreamContext.PullSubscription, wait_s: float) -> bool:
        """Wait for the next command: True once it is added."""
        try:
            [message] = await sub.fetch(1, timeout=wait_s)
        except APIError as exc:
            # An error status: start again. (nats-py takes a deleted consumer's 409 for a
            # timeout: the stream's check below finds what it missed.)
            log.info("profile_commands_consumer_lost", error=repr(exc))
            await self.close()
            return False
        except TimeoutError:
            state = (await self._js.stream_info(self._layout.commands_stream)).state
            if state.last_seq > self._seen_seq:
                await self.close()  # the consumer missed it: the next look starts again
            return False
        self._add(message)
        return True

    def _add(self, message: Msg) -> None:
        seq = message.metadata.sequence.stream
        self._stored = message.metadata.num_pending
        if seq <= self._seen_seq:
            return
        self._seen_seq = seq
        command = command_of(message.data or b"")
        if command is None:
            log.warning("profile_command_unreadable", seq=seq)
            return
        self.queue.append((seq, command))


class HeldReader:
    """The identity stage's reader of the messages stream, which reads no further than the
    next command's `after_seq` until that command is carried out."""

    def __init__(self, inner: StreamConsumer, pending: PendingCommands) -> None:
        self._inner = inner
        self._pending = pending
        self.new_messages = inner.new_messages

    @property
    def seq(self) -> int:
        return self._inner.seq

    @seq.setter
    def seq(self, value: int) -> None:
        self._inner.seq = value

    async def start(self, from_seq: int = 0) -> int:
        return await self._inner.start(from_seq)

    async def read(self, limit: int) -> list[Message]:
        hold = self._pending.hold_seq()
        if hold is not None:
            limit = min(limit, hold - self._inner.seq)
            if limit <= 0:
                return []
        return await self._inner.read(limit)

    async def wait(self, stop: asyncio.Event, poll_s: float) -> None:
        hold = self._pending.hold_seq()
        if hold is None or self._inner.seq < hold:
            await self._inner.wait(stop, poll_s)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._pending.released.wait(), min(poll_s, HELD_POLL_S))
        self._pending.released.clear()

    async def close(self) -> None:
        await self._inner.close()


class CommandRunner:
    """A service (`run(stop)`) of the lease holder's stages: carries out the pending commands
    in order, each at its place in the messages stream."""

    def __init__(
        self,
        js: JetStreamContext,
        layout: Layout,
        pending: PendingCommands,
        stages: tuple[IdentityStage, EngageStage | None, MessageCache],
        store: ObjectStore,
        store_snapshot: StoreSnapshot,
        clock: Clock,
    ) -> None:
        self._js = js
        self._layout = layout
        self._pending = pending
        self._identity, self._engage, self._cache = stages
        self._store = store
        self._store_snapshot = store_snapshot
        self._clock = clock
        self.carried_out = 0

    async def run(self, stop: asyncio.Event) -> None:
        kv = await self._js.key_value(self._layout.outcomes_bucket)
        while not stop.is_set():
            if not self._pending.queue:
                await self._next_commands(stop)
                continue
            seq, command = self._pending.queue[0]
            if not await self._reached(command.after_seq):
                continue
            if not await self._carry_out(kv, seq, command, stop):
                return  # stopped before its snapshot: the next holder carries it out
            self._pending.queue.popleft()
            self._pending.released.set()

    async def _next_commands(self, stop: asyncio.Event) -> None:
        """Until a command is stored, `COMMAND_WAIT_S` pass, or the stages stop."""
        await first_of(self._pending.fetch(COMMAND_WAIT_S), stop.wait())  # errors: supervisor

    async def _reached(self, after_seq: int) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(POLL_S):
                await self._identity.wait_resolved(after_seq)
        return self._identity.committed_seq >= after_seq

    async def _carry_out(
        self, kv: KeyValue, seq: int, command: ProfileCommand, stop: asyncio.Event
    ) -> bool:
        if not await take(kv, command.id):
            log.info("profile_command_withdrawn", command=command.id, kind=command.kind)
            await self._identity.record_position(POSITION_NAME, seq)
            return True
        outcome = await self._apply(command)
        await self._identity.record_position(POSITION_NAME, seq)
        if command.kind == FORGET:
            await self._engage_followed(stop)
        stored = await self._snapshot(stop)
        if stored is None:
            return False
        if command.kind == FORGET:
            await self._drop_older_snapshots(stored)
        await kv.put(command.id, encode(outcome))
        self.carried_out += 1
        log.info(
            "profile_command_done",
            command=command.id,
            kind=command.kind,
            state=outcome.state,
            after_seq=command.after_seq,
            snapshot=stored.object,
        )
        return True

    async def _apply(self, command: ProfileCommand) -> Outcome:
        if command.kind == FORGET:
            rows = await self._identity.forget_users(command.users)
            await self._cache.forget_users(command.users)
            return Outcome(state=DONE, rows=rows)
        if command.identifier is None:
            return Outcome(state=REFUSED, error="the unmerge names no identifier")
        try:
            profiles = await self._identity.unmerge(command.identifier, command.collection)
        except IdentityError as exc:
            return Outcome(state=REFUSED, error=str(exc))
        return Outcome(state=DONE, profiles=profiles)

    async def _engage_followed(self, stop: asyncio.Event) -> None:
        """Until Engage has deleted its state of the forgotten profiles too."""
        engage, reader = self._engage, self._identity.reader
        if engage is None or reader is None:
            return
        rows = await reader.execute_fetchall("SELECT coalesce(max(id), 0) FROM forgotten")
        wanted = int(next(iter(rows))[0])
        while engage.position.forgotten < wanted and not stop.is_set():
            engage.wake.set()
            await self._clock.wait(stop, POLL_S)

    async def _snapshot(self, stop: asyncio.Event) -> SnapshotName | None:
        while not stop.is_set():
            stored = await self._store_snapshot()
            if stored is not None:
                return stored
            await self._clock.wait(stop, SNAPSHOT_RETRY_S)
        return None

    async def _drop_older_snapshots(self, stored: SnapshotName) -> None:
        await snapshots.prune_before(self._store, stored)
