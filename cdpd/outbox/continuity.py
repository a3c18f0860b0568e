"""Whether the outbox's sequence went backwards under a consumer that keeps its position
elsewhere (a warehouse keeps its own, beside the rows it loaded).

Seqs only grow (AUTOINCREMENT keeps the highest ever given in `sqlite_sequence`, even after the
messages are pruned). A warehouse whose position is past that high-water mark has loaded
messages this outbox no longer knows of: the outbox lost its last commits (a deleted or
corrupted WAL) or was restored from a backup. New messages would get seqs the warehouse has
already passed, and a load would skip them; so nothing is loaded into it until it is rewound.
"""

from __future__ import annotations

import aiosqlite
import msgspec

HIGH_WATER = "SELECT seq FROM sqlite_sequence WHERE name = 'messages'"
POSITION = "SELECT seq FROM consumers WHERE name = ?"


class SequenceGap(msgspec.Struct, frozen=True, kw_only=True):
    """A warehouse ahead of the outbox, and how to recover."""

    warehouse: str
    warehouse_position: int
    outbox_seq: int
    # Where to rewind: the warehouse's position as this outbox last recorded it (its
    # `consumers` row), never past the outbox's end. Loading again from there merges rows that
    # are already in the warehouse (by id) and skips nothing.
    rewind_to: int
    code: str = "outbox_sequence_went_backwards"

    @property
    def message(self) -> str:
        return (
            f"warehouse {self.warehouse!r} has loaded up to seq {self.warehouse_position} but "
            f"the outbox ends at seq {self.outbox_seq}: the outbox lost its last commits (a "
            "lost or corrupted WAL) or was restored from a backup. Nothing is loaded into this "
            "warehouse until it is rewound: cdpd warehouse rewind "
            f"{self.warehouse} (to seq {self.rewind_to})"
        )


class OutboxBehind(Exception):
    """Raised instead of loading into a warehouse that is ahead of the outbox."""

    def __init__(self, gap: SequenceGap) -> None:
        super().__init__(gap.message)
        self.gap = gap


async def high_water(conn: aiosqlite.Connection) -> int:
    """The highest seq the outbox has ever given (0 before its first message)."""
    rows = list(await conn.execute_fetchall(HIGH_WATER))
    return int(rows[0][0]) if rows else 0


async def recorded_position(conn: aiosqlite.Connection, warehouse: str) -> int:
    rows = list(await conn.execute_fetchall(POSITION, (f"warehouse:{warehouse}",)))
    return int(rows[0][0]) if rows else 0


async def gap(conn: aiosqlite.Connection, warehouse: str, position: int) -> SequenceGap | None:
    """The gap, if the warehouse at `position` is ahead of the outbox on `conn`."""
    outbox_seq = await high_water(conn)
    if position <= outbox_seq:
        return None
    rewind_to = min(await recorded_position(conn, warehouse), outbox_seq)
    return SequenceGap(
        warehouse=warehouse,
        warehouse_position=position,
        outbox_seq=outbox_seq,
        rewind_to=rewind_to,
    )
