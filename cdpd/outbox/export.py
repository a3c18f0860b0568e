"""`cdpd outbox export`: the outbox's messages as JSON lines, each with the consumers that still
owe it, for `cdpd outbox import` into the JetStream backend (docs/scaling.md).

The first line is an `ExportHeader`; every other line an `ExportedMessage`, in seq order. The
whole export is read in one read transaction of a read-only connection (a snapshot: the daemon
may keep running, but what it stores or delivers afterwards is not in it), a chunk at a time,
so memory stays constant however large the outbox is.

A message is owed to a destination when the destination's lane has not passed it, or when it
has an unfinished row in `deliveries` (pending, in flight or retrying), or when an unfinished
replay job of that destination still has it ahead; to a warehouse when the warehouse's
position (read from the warehouse) is behind it. Dead deliveries are not owed: they stay in
the old outbox, for `cdpd replay --dead` there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import aiosqlite
import msgspec

from cdpd.config import Config
from cdpd.delivery.store import ReplayJob, lane_consumer, replay_consumer
from cdpd.model.timestamps import format_ms, now_ms
from cdpd.outbox import consumers, continuity, schema
from cdpd.outbox.consumers import Progress
from cdpd.warehouse.loader import SYNC_ERRORS
from cdpd.warehouse.sinks import open_sink

FORMAT = "cdpd-outbox-export"
VERSION = 1
CHUNK_MESSAGES = 2000
UNFINISHED_STATES = ("pending", "in_flight", "retrying")


class ExportHeader(msgspec.Struct, frozen=True, kw_only=True):
    """The first line of an export."""

    format: str
    version: int
    outbox: str  # the outbox file it was read from
    last_seq: int  # the highest seq the outbox had given
    exported_at: str
    pending_only: bool
    destinations: list[str]  # destinations with a lane in the outbox
    warehouses: dict[str, int]  # each configured warehouse's position when exported


class ExportedMessage(consumers.Message, frozen=True, kw_only=True):
    """One message: the columns of `messages` (the payload as stored, byte for byte) and who
    still owes it."""

    owed_destinations: list[str]
    owed_warehouses: list[str]

    @property
    def owed(self) -> bool:
        return bool(self.owed_destinations or self.owed_warehouses)


class ExportCounts(msgspec.Struct, kw_only=True):
    messages: int = 0  # written
    owed: int = 0  # of which some consumer still owes
    last_seq: int = 0


MESSAGES_AFTER = (
    "SELECT seq, message_id, source, type, event, user_id, anonymous_id, received_at, payload"
    " FROM messages WHERE seq > ? ORDER BY seq LIMIT ?"
)
UNFINISHED_ROWS = (
    "SELECT seq, destination FROM deliveries WHERE seq BETWEEN ? AND ?"
    " AND state IN ('pending', 'in_flight', 'retrying')"
)
UNFINISHED_REPLAYS = (
    "SELECT id, destination, first_seq, last_seq, since_at, until_at, source FROM replays"
    " WHERE finished_at IS NULL ORDER BY id"
)

_encoder = msgspec.json.Encoder()


class Owing:
    """Who owes what, from the consumers' positions (read once, at the snapshot)."""

    def __init__(
        self,
        lanes: dict[str, Progress],
        replays: list[tuple[ReplayJob, Progress]],
        warehouses: dict[str, int],
    ) -> None:
        self.lanes = lanes
        self.replays = replays
        self.warehouses = warehouses

    def destinations(self, seq: int, source: str, received_at: str, rows: set[str]) -> list[str]:
        owed = [name for name, progress in self.lanes.items() if not progress.is_done(seq)]
        if not (rows or self.replays):
            return owed  # the common case, in the lanes' (sorted) order
        replayed = {
            job.destination
            for job, progress in self.replays
            if seq <= job.last_seq
            and not progress.is_done(seq)
            and job.since_at <= received_at < job.until_at
            and (job.source is None or job.source == source)
        }
        return sorted({*owed, *rows, *replayed})

    def warehouses_behind(self, seq: int) -> list[str]:
        return [name for name, position in self.warehouses.items() if position < seq]


class WarehouseUnreadable(Exception):
    """A warehouse's position cannot be read: what it is owed is unknown."""


async def warehouse_positions(config: Config) -> dict[str, int]:
    """Each configured warehouse's position, read from the warehouse itself."""
    positions = {}
    for warehouse in config.warehouses:
        try:
            async with open_sink(config, warehouse) as sink:
                positions[warehouse.name] = await sink.position()
        except SYNC_ERRORS as exc:
            raise WarehouseUnreadable(
                f"warehouse {warehouse.name}: its position cannot be read: {exc}"
            ) from exc
    return positions


async def _owing(conn: aiosqlite.Connection, warehouses: dict[str, int]) -> Owing:
    known = await consumers.positions(conn)
    lanes = {
        p.name.removeprefix(lane_consumer("")): Progress(p.seq, p.done_ranges)
        for p in sorted(known.values(), key=lambda p: p.name)
        if p.kind == "delivery" and not p.paused  # a disabled destination starts at the end
    }
    replays = []
    for row in await conn.execute_fetchall(UNFINISHED_REPLAYS):
        job = ReplayJob(*row)
        position = known.get(replay_consumer(job.id))
        start = position.seq if position is not None else job.first_seq - 1
        replays.append((job, Progress(start, position.done_ranges if position else ())))
    return Owing(lanes, replays, dict(sorted(warehouses.items())))


async def _chunks(conn: aiosqlite.Connection, owing: Owing) -> AsyncIterator[list[ExportedMessage]]:
    """Every message, in seq order, a chunk at a time."""
    after_seq = 0
    while True:
        rows = list(await conn.execute_fetchall(MESSAGES_AFTER, (after_seq, CHUNK_MESSAGES)))
        if not rows:
            return
        unfinished: dict[int, set[str]] = defaultdict(set)
        for seq, destination in await conn.execute_fetchall(
            UNFINISHED_ROWS, (rows[0][0], rows[-1][0])
        ):
            unfinished[seq].add(destination)
        yield [_exported(row, owing, unfinished.get(row[0], set())) for row in rows]
        after_seq = rows[-1][0]


def _exported(row: Any, owing: Owing, unfinished: set[str]) -> ExportedMessage:
    seq, source, received_at = row[0], row[2], row[7]
    return ExportedMessage(
        *row,
        owed_destinations=owing.destinations(seq, source, received_at, unfinished),
        owed_warehouses=owing.warehouses_behind(seq),
    )


async def export(
    config: Config, out: IO[bytes], *, pending_only: bool, path: Path | None = None
) -> ExportCounts:
    """Write the export of the outbox at `path` (default: the config's) to `out`."""
    path = path or config.storage.outbox_path
    counts = ExportCounts()
    async with schema.connect(path, readonly=True) as conn:
        await conn.execute("BEGIN")  # one snapshot for the positions and the messages
        try:
            counts.last_seq = await continuity.high_water(conn)
            owing = await _owing(conn, await warehouse_positions(config))
            header = ExportHeader(
                format=FORMAT,
                version=VERSION,
                outbox=str(path),
                last_seq=counts.last_seq,
                exported_at=format_ms(now_ms()),
                pending_only=pending_only,
                destinations=sorted(owing.lanes),
                warehouses=owing.warehouses,
            )
            out.write(_encoder.encode(header) + b"\n")
            async for chunk in _chunks(conn, owing):
                owed = [message for message in chunk if message.owed]
                counts.owed += len(owed)
                written = owed if pending_only else chunk
                out.write(_encoder.encode_lines(written))
                counts.messages += len(written)
        finally:
            await conn.execute("COMMIT")
    out.flush()
    return counts
