"""Per-action outcomes of a delivery that several actions send (a GA4 or Slack destination with
two actions matching one message): when one action's request succeeded and another's failed
and is retried, the retry sends only the actions that have not succeeded, so nothing is sent
twice.

The table `delivered_actions` holds (destination, seq, action) for each action that succeeded
while its delivery as a whole was to be retried. Rows are written just before the attempt is
recorded; the pruner removes them once their delivery is no longer waiting (and they are older
than `KEEP_AT_LEAST_S`, so a row is never pruned before its delivery's row is written).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiosqlite

if TYPE_CHECKING:
    from cdpd.outbox.writer import OutboxWriter

# Appended to the outbox's MIGRATIONS; self-contained, so its number may change at a merge.
MIGRATION = """
CREATE TABLE delivered_actions (
    destination  TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    action       TEXT NOT NULL,
    delivered_at TEXT NOT NULL,
    PRIMARY KEY (destination, seq, action)
) WITHOUT ROWID;
"""
KEEP_AT_LEAST_S = 600
PRUNE = """
DELETE FROM delivered_actions WHERE delivered_at < ? AND NOT EXISTS (
    SELECT 1 FROM deliveries AS d
    WHERE d.destination = delivered_actions.destination AND d.seq = delivered_actions.seq
      AND d.state IN ('pending', 'in_flight', 'retrying'))
"""


class ActionOutcomes:
    """The succeeded actions of one destination's deliveries that wait for a retry."""

    def __init__(self, writer: OutboxWriter, destination: str) -> None:
        self._writer = writer
        self._destination = destination

    async def done(self, seqs: Sequence[int]) -> dict[int, set[str]]:
        """The actions already delivered, per delivery (by seq)."""
        if not seqs:
            return {}

        async def read(conn: aiosqlite.Connection) -> list[Any]:
            marks = ",".join("?" * len(seqs))
            return list(
                await conn.execute_fetchall(
                    "SELECT seq, action FROM delivered_actions"  # noqa: S608 - placeholders only
                    f" WHERE destination = ? AND seq IN ({marks})",
                    (self._destination, *seqs),
                )
            )

        found: dict[int, set[str]] = {}
        for seq, action in await self._writer.transact(read):
            found.setdefault(seq, set()).add(action)
        return found

    async def remember(self, delivered: Sequence[tuple[int, str]], at: str) -> None:
        """Actions (seq, action name) that succeeded while their delivery is to be retried."""
        if not delivered:
            return

        async def write(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                "INSERT OR IGNORE INTO delivered_actions (destination, seq, action, delivered_at)"
                " VALUES (?, ?, ?, ?)",
                [(self._destination, seq, action, at) for seq, action in delivered],
            )

        await self._writer.transact(write)


async def prune(conn: aiosqlite.Connection, before_at: str) -> int:
    """Rows of deliveries that no longer wait (delivered, dead or pruned)."""
    cursor = await conn.execute(PRUNE, (before_at,))
    return int(cursor.rowcount)
