"""The profiles holder's message cache keeps what Engage has yet to apply and what the events
history still shows, and nothing older."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cdpd.cluster.ordered import fresh_cache
from cdpd.outbox.consumers import Message


def _message(seq: int, received_at: str) -> Message:
    return Message(seq, f"m{seq}", "web", "track", "Order", "u1", None, received_at, "{}")


async def test_prune_drops_only_what_is_applied_and_past_the_history(tmp_path: Path) -> None:
    path = tmp_path / "stream_messages.sqlite3"
    path.write_text("left by an earlier lease")  # a fresh cache replaces it
    async with fresh_cache(path) as cache:
        await cache.add(
            [
                _message(1, "2026-01-01T00:00:00.000Z"),
                _message(2, "2026-01-01T00:00:00.000Z"),
                _message(3, "2026-03-01T00:00:00.000Z"),
            ]
        )
        await cache.add([_message(3, "2026-03-01T00:00:00.000Z")])  # read twice: kept once
        await cache.prune(1, "2026-02-01T00:00:00.000Z")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT seq FROM messages ORDER BY seq").fetchall() == [(2,), (3,)]
