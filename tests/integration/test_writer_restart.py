"""The outbox writer under supervision: a bug that ends its `run` fails only the cycle it hit;
what is queued is committed by the restarted run, also when the writer is closed meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from structlog.testing import capture_logs

from cdpd.model.rows import OutboxRow
from cdpd.model.timestamps import format_ms
from cdpd.outbox import schema
from cdpd.outbox.writer import AppendResult, OutboxWriter
from cdpd.supervise import Restarts, supervise
from tests.helpers import FakeClock


class FailsOnce(asyncio.Event):
    """A commit listener whose first `set` raises: a bug after a commit, which ends the
    writer's `run`."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def set(self) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a listener's bug")
        super().set()


def row(message_id: str) -> OutboxRow:
    received_at = format_ms(0)
    payload = msgspec.json.encode({"messageId": message_id}).decode()
    return OutboxRow(message_id, "website", "track", "E", "u1", None, received_at, payload)


async def test_the_writer_restarts_and_commits_what_was_queued(tmp_path: Path) -> None:
    clock, restarts = FakeClock(), Restarts()
    async with schema.connect(tmp_path / "outbox.sqlite3") as conn:
        writer = OutboxWriter(
            conn, commit_max_rows=10, dedup_window_s=0, full_retry_after_s=3, clock_s=lambda: 0.0
        )
        await writer.start()
        writer.on_messages(FailsOnce())

        async def run(_: asyncio.Event) -> None:
            await writer.run()

        supervised = asyncio.create_task(
            supervise("outbox-writer", run, asyncio.Event(), clock=clock, restarts=restarts)
        )
        with capture_logs() as logs:
            # Committed, and answered, before the listener fails.
            assert await writer.append([row("m1")], [], 0) == AppendResult(1, 0)
            await restarts.wait_for("outbox-writer", 1)
            queued = asyncio.create_task(writer.append([row("m2")], [], 0))
            await asyncio.sleep(0)  # queued while the writer waits out its pause
            assert not queued.done()
            clock.advance(0.5)
            assert await queued == AppendResult(1, 0)
            writer.close()
            await supervised
    assert writer.last_seq == 2
    assert restarts.counts == {"outbox-writer": 1}
    (failed,) = [e for e in logs if e["event"] == "service_failed"]
    assert failed["service"] == "outbox-writer"


async def test_a_writer_closed_during_its_pause_commits_what_was_queued(tmp_path: Path) -> None:
    clock, restarts = FakeClock(), Restarts()
    async with schema.connect(tmp_path / "outbox.sqlite3") as conn:
        writer = OutboxWriter(
            conn, commit_max_rows=10, dedup_window_s=0, full_retry_after_s=3, clock_s=lambda: 0.0
        )
        await writer.start()
        writer.on_messages(FailsOnce())

        async def run(_: asyncio.Event) -> None:
            await writer.run()

        supervised = asyncio.create_task(
            supervise("outbox-writer", run, asyncio.Event(), clock=clock, restarts=restarts)
        )
        await writer.append([row("m1")], [], 0)
        await restarts.wait_for("outbox-writer", 1)
        queued = asyncio.create_task(writer.append([row("m2")], [], 0))
        await asyncio.sleep(0)
        writer.close()  # shutting down: new appends are refused, the queued one is kept
        clock.advance(0.5)
        assert await queued == AppendResult(1, 0)
        await supervised
    assert writer.last_seq == 2
