"""A JetStream node's part in regulations' `file:<name>` targets: it erases the users' lines
from its own files, as the SQLite backend erases its one file, and says so in the outcomes
bucket (`cdpd.cluster.file_writers` has the keys); the regulations worker finishes the target
once every node that writes the file has.

A node works a regulation's file target once its `outbox` and `identity` targets have finished
(the users' messages are gone from the streams, and a suppressing regulation's suppression has
been in force everywhere for `SUPPRESSION_BOUND_S`), so a line written after its erasure comes
from no stored message of the users. It looks every `POLL_S` at the unfinished regulations.

At start, before its lanes write anything, a node heartbeats (the worker waits for it from
then on) and erases for every regulation due meanwhile: a node that was down when a
regulation was made erases on its return, and the target waits for it. A node away for longer
than `node_gone_s` was not waited for: it still erases, on its return, for the regulations
finished since it was last seen, and logs `file_erased_late`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import structlog
from nats.js.kv import KeyValue

from cdpd.cluster import file_writers
from cdpd.cluster.buckets import current
from cdpd.cluster.file_writers import FileWriter
from cdpd.cluster.profile_commands import DONE, FAILED, Outcome, encode
from cdpd.cluster.regulation_records import REGULATION, RegulationRecord
from cdpd.cluster.regulations import ClusterRegulations
from cdpd.destinations.file import File
from cdpd.destinations.settings import FileDestination
from cdpd.model.timestamps import parse_ms
from cdpd.privacy import deletion
from cdpd.privacy.regulations import FILE, FINISHED, FIRST, UNFINISHED

if TYPE_CHECKING:
    from cdpd.cluster.node import NodeParts

log = structlog.get_logger("cdpd.privacy")

POLL_S = 1.0
RETRY_FAILED_S = 30.0  # after a failed erasure (a full disk, say), before the next try


async def _nothing_to_wait_for(present: Sequence[str], absent: Sequence[str]) -> None:
    """This reader changes no suppression."""


class FileErasure:
    """The node's erasures of its file destinations' files (`run(stop)` after `start()`)."""

    def __init__(self, parts: NodeParts, positions: KeyValue, outcomes: KeyValue) -> None:
        self._parts = parts
        self._positions = positions
        self._outcomes = outcomes
        self._files = {
            d.name: d for d in parts.config.destinations if isinstance(d, FileDestination)
        }
        self.node_id = file_writers.node_id(Path(parts.config.storage.data_dir))
        self._gone_s = parts.config.storage.jetstream.node_gone_s
        self._running: dict[str, File] = {}  # the delivery's senders, once it built them
        self._erasing = asyncio.Lock()  # one erasure at a time, and none while they change
        self._book: ClusterRegulations | None = None
        self._failed_at_ms: dict[str, int] = {}  # by outcome key
        self._done: set[str] = set()  # outcome keys this node wrote `done` (not read again)

    async def start(self) -> None:
        """Heartbeat, then erase what is due (and, back after `node_gone_s`, what finished
        without this node): before this node's lanes write to the files."""
        js, config = self._parts.js, self._parts.config
        kv = await js.key_value(self._parts.layout.regulations_bucket)
        self._book = ClusterRegulations(config, js, kv, _nothing_to_wait_for)
        before = await file_writers.writer(self._positions, self.node_id)
        await self.heartbeat()
        await self.erase_due()
        if before is not None and self._clock_ms() - before.seen_at_ms > self._gone_s * 1000:
            await self._erase_missed(before.seen_at_ms)

    async def attach(self, running: dict[str, File]) -> None:
        """The delivery's file senders: later erasures go through them, between their writes."""
        async with self._erasing:
            self._running = dict(running)

    async def run(self, stop: asyncio.Event) -> None:
        clock = self._parts.clock
        beaten_ms = clock.now_ms()
        while not await clock.wait(stop, POLL_S):
            if clock.now_ms() - beaten_ms >= file_writers.HEARTBEAT_S * 1000:
                await self.heartbeat()
                beaten_ms = clock.now_ms()
            await self.erase_due()

    async def heartbeat(self) -> None:
        seen = FileWriter(
            node_id=self.node_id,
            node=self._parts.node_name,
            destinations=sorted(self._files),
            seen_at_ms=self._clock_ms(),
        )
        await self._positions.put(file_writers.writer_key(self.node_id), encode(seen))

    def _clock_ms(self) -> int:
        return self._parts.clock.now_ms()

    async def erase_due(self) -> None:
        book = self._regulations()
        due = await book.due_ids()
        self._forget_settled(frozenset(due))
        for regulation_id in due:
            found = await book.read(regulation_id)
            if found is not None:
                await self._erase_for(found[0], UNFINISHED)

    def _forget_settled(self, due: frozenset[str]) -> None:
        """What this node remembers of regulations no longer due."""
        self._done = {key for key in self._done if key.split(".")[1] in due}
        self._failed_at_ms = {k: v for k, v in self._failed_at_ms.items() if k.split(".")[1] in due}

    async def _erase_missed(self, seen_at_ms: int) -> None:
        """Regulations finished while this node was counted gone: erased late, and said so."""
        bucket = self._parts.layout.regulations_bucket
        for entry in await current(self._parts.js, bucket, f"{REGULATION}.*"):
            record = msgspec.json.decode(entry.value, type=RegulationRecord)
            missed = record.finished_at is not None and parse_ms(record.finished_at) > seen_at_ms
            if missed and await self._erase_for(record, (FINISHED,)):
                log.warning("file_erased_late", regulation=record.id, node_id=self.node_id)

    async def _erase_for(self, record: RegulationRecord, statuses: Sequence[str]) -> bool:
        """Erase for the record's file targets of ours in `statuses` not yet erased here;
        True when any was."""
        if not _first_finished(record):
            return False
        erased_any = False
        for target in record.targets:
            name = target.target.partition(":")[2]
            if target.kind != FILE or target.status not in statuses or name not in self._files:
                continue
            if await self._owed(record.id, name):
                await self._erase(record, name)
                erased_any = True
        return erased_any

    async def _owed(self, regulation_id: str, name: str) -> bool:
        key = file_writers.erased_key(regulation_id, name, self.node_id)
        if key in self._done:
            return False
        failed_at_ms = self._failed_at_ms.get(key)
        if failed_at_ms is not None and self._clock_ms() - failed_at_ms < RETRY_FAILED_S * 1000:
            return False
        done = await file_writers.erased(self._outcomes, regulation_id, name, self.node_id)
        if done is not None and done.state == DONE:
            self._done.add(key)
            return False
        return True

    async def _erase(self, record: RegulationRecord, name: str) -> None:
        drop = await self._line_filter(record)
        bound = log.bind(regulation=record.id, destination=name, node_id=self.node_id)
        async with self._erasing:
            try:
                rows = await deletion.erase_file(self._files[name], self._running.get(name), drop)
            except OSError as exc:
                outcome = Outcome(state=FAILED, error=f"{self._parts.node_name}: {exc}")
                bound.warning("file_erase_failed", error=str(exc))
            else:
                outcome = Outcome(state=DONE, rows=rows)
                bound.info("file_erased", lines_removed=rows)
        key = file_writers.erased_key(record.id, name, self.node_id)
        await self._outcomes.put(key, encode(outcome))
        if outcome.state == FAILED:
            self._failed_at_ms[key] = self._clock_ms()
        else:
            self._failed_at_ms.pop(key, None)
            self._done.add(key)

    async def _line_filter(self, record: RegulationRecord) -> Callable[[bytes], bool]:
        """The users' lines; for a source's regulation, those of the messages its `outbox`
        target erased (a line does not say its source), as on the SQLite backend."""
        book = self._regulations()
        if record.source is None:
            return deletion.line_filter(await book.subjects(record), ())
        return deletion.line_filter((), await book.erased(record.id))

    def _regulations(self) -> ClusterRegulations:
        if self._book is None:
            raise RuntimeError("FileErasure.start() has not run")
        return self._book


def _first_finished(record: RegulationRecord) -> bool:
    return all(t.status == FINISHED for t in record.targets if t.kind in FIRST)


@asynccontextmanager
async def file_erasure_stage(parts: NodeParts) -> AsyncIterator[FileErasure]:
    """Entered before delivery: the files are erased of what is due before a lane writes."""
    positions = await parts.js.key_value(parts.layout.positions_bucket)
    outcomes = await parts.js.key_value(parts.layout.outcomes_bucket)
    erasure = FileErasure(parts, positions, outcomes)
    await erasure.start()
    parts.file_erasure = erasure
    stop = asyncio.Event()
    running = parts.tasks.create_task(
        parts.supervised("file-erasure", erasure.run, stop), name="file-erasure"
    )
    try:
        yield erasure
    finally:
        stop.set()
        await running
