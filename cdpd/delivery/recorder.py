"""A lane's recorder: stores outcomes and moves the lane's positions, everything that finished
meanwhile in one operation.

An attempt's outcome is stored before the attempt frees its concurrency slot, so a message is
never attempted again before its last attempt is on disk, and after a crash only the attempts
that were in flight are sent again (at most `concurrency x batch_size` messages).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec
import structlog

from cdpd.clock import Clock
from cdpd.delivery.store import DeliveryStore, Outcome, Parked, Recording
from cdpd.model.timestamps import format_ms
from cdpd.outbox.consumers import Progress

log = structlog.get_logger()

BACKOFF_MAX_S = 30.0


class Finish(msgspec.Struct, frozen=True, gc=False):
    """A consumer's seqs first..last are finished (sent, parked, or not owed)."""

    consumer: str
    first: int
    last: int
    parked: Sequence[Parked] = ()


class Recorder:
    def __init__(
        self,
        store: DeliveryStore,
        clock: Clock,
        destination: str,
        progress: dict[str, Progress],
    ) -> None:
        self._store = store
        self._clock = clock
        self._destination = destination
        self._progress = progress
        self._waiting: list[tuple[Sequence[Outcome], Finish | None, asyncio.Future[None]]] = []
        self._finishes: list[Finish] = []
        self._jobs: list[int] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._closed = False

    async def record(self, outcomes: Sequence[Outcome], finish: Finish | None) -> None:
        """Store an attempt's outcomes (and the range it finishes); returns once committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((outcomes, finish, done))
        self._wake.set()
        await done

    def finish(self, finish: Finish) -> None:
        """A range with nothing to send (not owed, or parked only), stored with the next
        recording."""
        self._finishes.append(finish)
        self._wake.set()

    def finish_job(self, job_id: int) -> None:
        self._jobs.append(job_id)
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._waiting or self._finishes or self._jobs:
                await self._flush()
            elif self._closed:
                return

    async def _flush(self) -> None:
        """Store what is waiting, trying again (with a growing pause) for as long as the
        outbox refuses: the attempts wait, so nothing is sent twice meanwhile. Only a stop
        gives up; those messages are then sent again after the next start."""
        group, self._waiting = self._waiting, []
        finishes = [f for _, f, _ in group if f is not None] + self._finishes
        self._finishes = []
        jobs, self._jobs = self._jobs, []
        for finish in finishes:
            self._progress[finish.consumer].finish(finish.first, finish.last)
        recording = Recording(
            destination=self._destination,
            outcomes=[outcome for outcomes, _, _ in group for outcome in outcomes],
            parked=[p for f in finishes for p in f.parked],
            progress={
                name: (self._progress[name].seq, list(self._progress[name].done))
                for name in {f.consumer for f in finishes}
            },
            finished_jobs=jobs,
            at=format_ms(self._clock.now_ms()),
        )
        pause_s = 0.5
        while True:
            try:
                await self._store.record(recording)
                break
            except Exception as exc:  # e.g. a full or locked disk
                log.error(
                    "delivery_record_failed",
                    destination=self._destination,
                    error=str(exc),
                    outcomes=len(recording.outcomes),
                )
                if self._closed:
                    break
                await self._clock.wait(self._stop, pause_s)
                pause_s = min(BACKOFF_MAX_S, pause_s * 2)
        for _, _, done in group:
            if not done.done():
                done.set_result(None)
        self._wake.set()  # look again: more may have arrived during the write
