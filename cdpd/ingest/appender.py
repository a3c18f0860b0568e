"""What ingest hands accepted messages to: the SQLite outbox writer, or the JetStream appender
(`cdpd.cluster.ingest`). Either answers only once the messages are durable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cdpd.model.rows import OutboxRow, RejectRow
from cdpd.outbox.writer import AppendResult, ExtraRows


class Appender(Protocol):
    def check_accepting(self) -> None:
        """Raise OutboxUnavailable when an append would be refused right now."""

    async def append(
        self,
        rows: Sequence[OutboxRow],
        rejects: Sequence[RejectRow],
        received_at_ms: int,
        extra: ExtraRows = (),
    ) -> AppendResult:
        """Store the rows (and rejects and `extra`) durably; returns once they are."""
        ...
