"""The Engage stage of the daemon: follows the identity stage's ordered record (resolutions,
merges, forgotten profiles) into Engage's store, rolls windows forward on a timer, and sends
every entry, exit and computed value through the outbox as messages of the space's output
source, so they are archived, delivered (retries, dead letters, replay) and loaded into
warehouses like any other message.

Where it stands is `engage_position` in Engage's own file (`resolutions`: the last outbox seq
applied; `forgotten`: the last forgotten record applied), moved in the same transaction as
what the records changed, so a kill never applies a message twice. What is sent is
`engage_syncs`, moved after the outbox commit: a kill between the two sends the same messages
again with the same `messageId`s, which the outbox's deduplication drops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec
import structlog

from cdpd.clock import Clock
from cdpd.config import Config, engage_path, identity_path
from cdpd.engage import messages
from cdpd.engage import syncs as engage_syncs
from cdpd.engage.catalog import build as build_catalog
from cdpd.engage.inputs import Input, ProfileDeleted, ProfileMessage, ProfilesMerged
from cdpd.engage.settings import definition_sources
from cdpd.engage.store import EngageStore
from cdpd.identity import reads
from cdpd.identity import store as identity_store
from cdpd.identity.stage import IdentityStage
from cdpd.ingest.appender import Appender
from cdpd.model.rows import OutboxRow
from cdpd.model.timestamps import format_ms
from cdpd.outbox.writer import OutboxUnavailable

log = structlog.get_logger("cdpd.engage")

READ_MESSAGES = 2000  # resolutions applied per transaction
SYNC_PAGE = 500  # changes (or first-sync members) sent per outbox append
RECHECK_INTERVAL_S = 1.0  # how often windows are rolled forward
RECHECK_LIMIT = 5000

_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()


def output_source(space_id: str) -> str:
    """The source Engage's messages are written under (Segment: the space's output source)."""
    return f"engage_{space_id}"


def connections(config: Config) -> dict[str, list[messages.Connection]]:
    """Per definition key, how it is sent to each of its destinations."""
    result: dict[str, list[messages.Connection]] = {}
    for audience in config.audiences:
        result[audience.key] = [
            messages.Connection(
                destination=d.name,
                send_identify=d.send_identify,
                send_track=d.send_track,
                send_group=d.send_group,
                audience_entered_event=d.audience_entered_event,
                audience_exited_event=d.audience_exited_event,
            )
            for d in audience.destinations
        ]
    for trait in config.computed_traits:
        result[trait.key] = [
            messages.Connection(
                destination=d.name,
                send_identify=d.send_identify,
                send_track=d.send_track,
                trait_computed_event=d.trait_computed_event,
            )
            for d in trait.destinations
        ]
    return result


@dataclass
class Position:
    resolutions: int = 0
    forgotten: int = 0


class EngageStage:
    """Owns Engage's store while the daemon runs; `run` is supervised."""

    def __init__(
        self,
        config: Config,
        store: EngageStore,
        identity_reader: aiosqlite.Connection,
        writer: Appender,
        clock: Clock,
    ) -> None:
        self.config = config
        self.store = store
        self._reader = identity_reader
        self._writer = writer
        self._clock = clock
        self.wake = asyncio.Event()  # set by the identity stage on every commit or forget
        self._changed = asyncio.Event()  # set after each batch applied: something to send
        self.position = Position()
        self.source = output_source(config.engage.space_id)
        self._connections = connections(config)
        self.applied = 0
        self.sent = 0

    async def start(self) -> None:
        """Register the definitions (new ones are created now), compile them, and backfill
        new `historical` ones from the archive when the store already holds history. A new
        historical definition is registered only once its backfill is done, so a backfill
        cut short by a kill starts again at the next start."""
        stored = await self.store.position()
        self.position = Position(stored.get("resolutions", 0), stored.get("forgotten", 0))
        now_ms = self._clock.now_ms()
        sources = definition_sources(self.config.audiences, self.config.computed_traits)
        known = await self.store.register([], now_ms)
        historical = {a.key for a in self.config.audiences if a.historical}
        historical |= {t.key for t in self.config.computed_traits if t.historical}
        historical -= set(known)
        if self.position.resolutions == 0:
            historical = set()  # nothing applied yet: following the record counts everything
        created = await self.store.register([s for s in sources if s.key not in historical], now_ms)
        catalog = build_catalog(
            definition_sources(self.config.audiences, self.config.computed_traits, created)
        )
        self.store.use(catalog)
        if historical:
            await self.backfill(historical)
            await self.store.register([s for s in sources if s.key in historical], now_ms)

    async def backfill(self, keys: set[str]) -> None:
        """Feed the archived messages (those the outbox still holds) up to the position into
        the streams only these new definitions read."""
        catalog = self.store.catalog
        old = {
            stream.spec.id
            for definition in catalog.definitions
            if definition.key not in keys
            for stream in definition.plan.streams
        }
        by_event: dict[str, tuple[Any, ...]] = {}
        for event, streams in catalog.by_event.items():
            new = tuple(s for s in streams if s.spec.id not in old)
            if new:
                by_event[event] = new
        after, first, applied = 0, True, 0
        while after < self.position.resolutions:
            rows = await reads.messages_after(self._reader, after, READ_MESSAGES)
            rows = [row for row in rows if row.seq <= self.position.resolutions]
            if not rows:
                break
            inputs = [i for i in self._inputs(rows, [], []) if isinstance(i, ProfileMessage)]
            await self.store.backfill(inputs, self._clock.now_ms(), by_event, first=first)
            after, first, applied = rows[-1].seq, False, applied + len(inputs)
        log.info("engage_backfilled", definitions=sorted(keys), messages=applied)

    async def traits_of(self, profile_id: str, trait_class: str) -> dict[str, tuple[Any, int]]:
        """The profile's audiences (`audience`) or computed traits (`computed_trait`), each
        with when it took its value: the Profile API's `class=` traits."""
        values = await self.store.values_since(profile_id)
        catalog = self.store.catalog
        return {
            key: held
            for key, held in values.items()
            if (definition := catalog.get(key)) is not None
            and definition.source.kind == trait_class
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the record and send what changed, side by side: sending waits on the
        outbox's commits while the next batch is applied. Both end when `stop` is set; a
        last sync then sends what the last batch changed."""
        await self.start()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._send_while_running(stop), name="engage-send")
            try:
                await self._follow_while_running(stop)
            finally:
                self._changed.set()  # the sender sees `stop` at once
        await self.sync()

    async def _follow_while_running(self, stop: asyncio.Event) -> None:
        next_recheck_ms = 0
        while not stop.is_set():
            self.wake.clear()
            busy = await self.follow()
            if self._clock.now_ms() >= next_recheck_ms:
                await self.recheck()
                next_recheck_ms = self._clock.now_ms() + round(RECHECK_INTERVAL_S * 1000)
            self._changed.set()
            if not busy:
                await self._clock.wait(self.wake, RECHECK_INTERVAL_S)

    async def _send_while_running(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._changed.clear()
            await self.sync()
            await self._clock.wait(self._changed, RECHECK_INTERVAL_S)

    async def follow(self) -> bool:
        """Apply the next batch of the identity stage's record; False when it was caught up."""
        through = await reads.resolved_through(self._reader)
        rows = [
            row
            for row in await reads.messages_after(
                self._reader, self.position.resolutions, READ_MESSAGES
            )
            if row.seq <= through
        ]
        caught_up = max(through, self.position.resolutions)
        end = rows[-1].seq if len(rows) == READ_MESSAGES else caught_up
        merges = await reads.merges_after(self._reader, self.position.resolutions)
        forgotten = await reads.forgotten_after(self._reader, self.position.forgotten)
        forgotten = [f for f in forgotten if f.at_seq <= end]
        if end == self.position.resolutions and not forgotten:
            return False
        inputs = self._inputs(rows, [m for m in merges if m.seq <= end], forgotten)
        position = Position(end, forgotten[-1].id if forgotten else self.position.forgotten)
        await self.store.process(
            inputs,
            self._clock.now_ms(),
            position={"resolutions": position.resolutions, "forgotten": position.forgotten},
        )
        self.position = position
        self.applied += len(rows)
        return len(rows) == READ_MESSAGES

    def _inputs(
        self,
        rows: list[reads.ResolvedMessage],
        merges: list[reads.MergeRow],
        forgotten: list[reads.ForgottenRow],
    ) -> list[Input]:
        """The record in order: a merge before the message that caused it, a forgotten
        profile after every message up to where it was forgotten."""
        ordered: list[tuple[int, int, Input]] = []
        for row in rows:
            if row.canonical_id is None or row.payload is None or row.source == self.source:
                continue
            message = _decode.decode(row.payload)
            ordered.append((row.seq, 1, ProfileMessage(row.canonical_id, message, row.source)))
        for merge in merges:
            ordered.append((merge.seq, 0, ProfilesMerged(merge.profile_id, merge.into_profile_id)))
        for gone in forgotten:
            ordered.append((gone.at_seq, 2, ProfileDeleted(gone.profile_id)))
        ordered.sort(key=lambda item: (item[0], item[1]))
        return [item for _, _, item in ordered]

    async def recheck(self) -> None:
        """Windows roll forward: profiles whose values may change with time alone."""
        while len(await self.store.recheck_due(self._clock.now_ms(), limit=RECHECK_LIMIT)) > 0:
            pass

    async def sync(self) -> None:
        """Send what is due of every definition to each of its destinations."""
        for key, connected in self._connections.items():
            for connection in connected:
                try:
                    while await self._sync_page(key, connection):
                        pass
                except OutboxUnavailable as exc:
                    log.warning("engage_sync_deferred", key=key, reason=exc.code)
                    return

    async def _sync_page(self, key: str, connection: messages.Connection) -> bool:
        due = await self.store.sync_due(key, connection.destination, limit=SYNC_PAGE)
        now_ms = self._clock.now_ms()
        rows = [row for item in due.items for row in self._rows(item, connection, now_ms)]
        if rows:
            await self._writer.append(rows, [], now_ms)
        if not due.items and not due.first_sync:
            return False
        await self.store.mark_synced(key, connection.destination, due.position, now_ms)
        self.sent += len(rows)
        return bool(due.items) and (len(due.items) == SYNC_PAGE or due.position[1] is not None)

    def _rows(
        self, item: engage_syncs.Outgoing, connection: messages.Connection, now_ms: int
    ) -> list[OutboxRow]:
        received_at = format_ms(now_ms)
        rows = []
        for message in self._messages(item, connection, now_ms):
            message["receivedAt"] = received_at
            rows.append(_outbox_row(message, self.source, received_at))
        return rows

    def _messages(
        self, item: engage_syncs.Outgoing, connection: messages.Connection, now_ms: int
    ) -> list[dict[str, Any]]:
        space_id = self.config.engage.space_id
        definition = self.store.catalog.get(item.change.key)
        change = item.change
        if change.change == "joined":
            change = msgspec.structs.replace(change, change="entered", previous=False)
        elif definition is not None and definition.plan.account:
            return messages.for_account_change(
                item.change,
                item.profile_id,
                item.members,
                [connection],
                space_id=space_id,
                change_id=item.change_id,
                now_ms=now_ms,
            )
        return messages.for_change(
            change,
            item.identifiers,
            [connection],
            profile_id=item.profile_id,
            space_id=space_id,
            change_id=item.change_id,
            now_ms=now_ms,
        )


@asynccontextmanager
async def opened(
    config: Config, identity: IdentityStage, writer: Appender, clock: Clock, messages_path: Path
) -> AsyncIterator[EngageStage]:
    """The Engage stage following `identity`, its store open; `messages_path` holds the
    messages' payloads in the outbox's `messages` layout."""
    store = await EngageStore.open(engage_path(config))
    try:
        async with identity_store.connect_reader(identity_path(config)) as reader:
            await reads.attach_outbox(reader, messages_path)
            stage = EngageStage(config, store, reader, writer, clock)
            identity.followers.append(stage.wake)
            identity.engage_traits = stage.traits_of
            yield stage
    finally:
        await store.close()


def _outbox_row(message: dict[str, Any], source: str, received_at: str) -> OutboxRow:
    return OutboxRow(
        message_id=message["messageId"],
        source=source,
        type=message["type"],
        event=message.get("event"),
        user_id=message.get("userId"),
        anonymous_id=message.get("anonymousId"),
        received_at=received_at,
        payload=_encode.encode(message).decode(),
    )
