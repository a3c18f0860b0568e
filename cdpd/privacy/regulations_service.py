"""The regulation worker: keeps the suppressions in force and works each regulation's targets.

A service (`run(stop)`, under `cdpd.supervise`). It notices regulations written by the admin
API (which calls `refresh` before it answers) or by `cdpd regulations create` from another
process (polled every `POLL_INTERVAL_S`), puts their suppressions in force, then works their
targets in order: the outbox, then the identity store (the users' profiles), then every
warehouse (its Profiles Sync tables included) and local file, then the destinations; none of
these starts before the outbox and identity targets have finished.
A target that fails is tried again as a delivery is (the delivery retry policy: backoff with
jitter, Retry-After honoured, given up after the retry window) and its attempts, last status
and error are kept in `regulation_targets`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import aiosqlite
import structlog

from cdpd.clock import Clock, SystemClock
from cdpd.config import Config
from cdpd.destinations.file import File
from cdpd.destinations.settings import Destination, FileDestination
from cdpd.model.timestamps import format_ms, parse_ms
from cdpd.outbox.writer import OutboxWriter
from cdpd.privacy import deletion, regulations_store, regulations_vendors
from cdpd.privacy.regulation_attempts import (
    TargetFailed,
    attempt,
    given_up,
    log_outcome,
    permanent,
    retry_policy,
)
from cdpd.privacy.regulations import (
    DESTINATION,
    FAILED,
    FILE,
    FINISHED,
    FIRST,
    IDENTITY,
    OUTBOX,
    RUNNING,
    WAREHOUSE,
)
from cdpd.privacy.regulations_store import DueTarget, TargetUpdate
from cdpd.privacy.suppression import Suppressions

if TYPE_CHECKING:
    from cdpd.delivery.service import Delivery
    from cdpd.identity.stage import IdentityStage
    from cdpd.privacy.portal import Portal
    from cdpd.reload import Consumers

log = structlog.get_logger("cdpd.privacy")

POLL_INTERVAL_S = 0.5  # how soon a regulation written by another process takes effect
QUIET_POLL_S = 0.05


class RegulationService:
    def __init__(
        self,
        writer: OutboxWriter,
        reader: aiosqlite.Connection,
        suppressions: Suppressions,
        pipeline: Consumers,
        session: aiohttp.ClientSession,
        clock: Clock,
        *,
        outbox_path: str | Path,
        identity: IdentityStage | None = None,
        privacy: Callable[[], Portal] | None = None,
    ) -> None:
        self._path = Path(outbox_path)
        self._identity = identity
        self._privacy = privacy  # the Privacy Portal in force (a reload replaces it)
        self._writer = writer
        self._reader = reader  # read-only, shared with the admin API
        self._suppressions = suppressions
        self._pipeline = pipeline  # the config, delivery and warehouses in force (they reload)
        self._session = session
        self._clock = clock
        self._idle = SystemClock()
        self._seen_seq = -1
        self._refreshing = asyncio.Lock()
        self._wake = asyncio.Event()
        self._erased: dict[str, set[str]] = {}  # message ids the outbox step removed
        self.passes = 0
        self.worked = asyncio.Condition()  # notified after each pass (tests wait on it)

    @property
    def config(self) -> Config:
        """The config in force (a reload replaces it)."""
        return self._pipeline.config

    def _destination(self, name: str) -> Destination | None:
        return next((d for d in self._pipeline.config.destinations if d.name == name), None)

    async def start(self) -> None:
        """Put the stored suppressions in force; before ingest opens."""
        await self.refresh()

    async def refresh(self) -> None:
        """Take up regulations written since the last look: their suppressions are in force
        when this returns."""
        async with self._refreshing:
            last = await regulations_store.last_seq(self._reader)
            if last == self._seen_seq:
                return
            self._suppressions.replace(await regulations_store.suppressions(self._reader))
            after, self._seen_seq = self._seen_seq, last
            log.info(
                "regulations_taken_up",
                regulations=last - max(after, 0),
                suppressed_users=len(self._suppressions),
            )
            await self._writer.transact(
                functools.partial(regulations_store.start_new, after_seq=after)
            )
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            await self.refresh()
            delay_s = await self._work_due(stop)
            await self._forget_passed()
            async with self.worked:
                self.passes += 1
                self.worked.notify_all()
            # Real time, not `clock`: a poll, which must not wake with a test's fake clock.
            await self._idle.wait(self._wake, min(POLL_INTERVAL_S, delay_s))
            if stop.is_set():
                return

    async def _work_due(self, stop: asyncio.Event) -> float:
        """Attempt every due target; the seconds until the next one is due."""
        due = await regulations_store.due(self._reader, format_ms(self._clock.now_ms()))
        done: dict[tuple[str, str], str] = {}
        for target in due:
            if stop.is_set():
                break
            first = target.kind in FIRST
            before = FIRST[: FIRST.index(target.kind)] if first else FIRST
            failed = await self._failed_before(target, before, done)
            if failed is not None:
                await self._give_up(target, f"the {failed} deletion failed, so this was not tried")
                done[target.regulation_id, target.kind] = FAILED
            elif first or await self._finished_before(target, done):
                done[target.regulation_id, target.kind] = await self._attempt(target)
        next_at = await regulations_store.next_due_at(self._reader)
        if next_at is None:
            return POLL_INTERVAL_S
        return max(0.0, (parse_ms(next_at) - self._clock.now_ms()) / 1000)

    async def _forget_passed(self) -> None:
        """Deleted seqs every lane has passed need no skipping any more (a lane re-reads
        retries and replays from the outbox, where they are gone)."""
        erased = self._pipeline.delivery.erased
        if not erased:
            return
        passed = await regulations_store.lanes_passed(self._reader)
        if passed is None:  # no lane runs
            erased.clear()
        else:
            erased.difference_update([seq for seq in erased if seq <= passed])

    async def _status(
        self, regulation_id: str, kind: str, done: dict[tuple[str, str], str]
    ) -> str | None:
        """A first target's status (None: the regulation has none of that kind)."""
        return done.get((regulation_id, kind)) or await regulations_store.target_status(
            self._reader, regulation_id, kind
        )

    async def _failed_before(
        self, target: DueTarget, kinds: Sequence[str], done: dict[tuple[str, str], str]
    ) -> str | None:
        for kind in kinds:
            if await self._status(target.regulation_id, kind, done) == FAILED:
                return kind
        return None

    async def _finished_before(self, target: DueTarget, done: dict[tuple[str, str], str]) -> bool:
        for kind in FIRST:
            if await self._status(target.regulation_id, kind, done) not in (FINISHED, None):
                return False
        return True

    async def _attempt(self, due: DueTarget) -> str:
        """One attempt at one target; returns the target's status after it."""
        users = await regulations_store.subjects(self._reader, due.regulation_id)
        bound = log.bind(regulation=due.regulation_id, target=due.target)
        work = functools.partial(self._work, due, users)
        update = await attempt(
            due, work, retry_policy(self.config, due.kind, due.target), self._clock, bound
        )
        log_outcome(bound, update, await self._record(update))
        return update.status

    async def _work(self, due: DueTarget, users: Sequence[str]) -> int:
        if due.kind == OUTBOX:
            erased = await deletion.erase_outbox(
                self._writer, self._path, users, due.source, self._unsent, self._forget_samples
            )
            self._erased[due.regulation_id] = erased.message_ids
            return erased.rows
        if due.kind == IDENTITY:
            if self._identity is None:
                raise permanent("identity resolution is off ([identity] is not configured)")
            return await self._identity.forget_users(users)
        name = due.target.partition(":")[2]
        if due.kind == WAREHOUSE:
            warehouse = deletion.warehouse_named(self._pipeline.config, name)
            if warehouse is None:
                raise permanent(f"no warehouse is named {name!r} any more")
            return await deletion.erase_warehouse(
                self._pipeline.config, warehouse, self._pipeline.warehouses, users, due.source
            )
        destination = self._destination(name)
        if destination is None or (due.kind == FILE) != isinstance(destination, FileDestination):
            what = "file destination" if due.kind == FILE else "destination"
            raise permanent(f"no {what} is named {name!r} any more")
        if isinstance(destination, FileDestination):
            drop = deletion.line_filter(
                users if due.source is None else (),
                self._erased.get(due.regulation_id, ()),
            )
            return await deletion.erase_file(
                destination, _files(self._pipeline.delivery).get(name), drop
            )
        assert due.kind == DESTINATION
        await self._quiet(name, destination.timeout_s)
        sent = await regulations_vendors.forward(
            self._session, destination, users, due.regulation_id
        )
        if not sent.ok:
            raise TargetFailed(sent.error or "failed", sent.status, sent.retry_after_s)
        return sent.users

    def _forget_samples(self, shows: Callable[[str], bool]) -> None:
        if self._privacy is not None:
            self._privacy().clear_samples(shows)

    def _unsent(self, seqs: list[int]) -> None:
        """Messages about to be deleted from the outbox: not to be sent or resolved."""
        self._pipeline.delivery.erased.update(seqs)
        if self._identity is not None:
            self._identity.erased(seqs)

    async def _quiet(self, name: str, timeout_s: float) -> None:
        """Wait (at most the destination's request timeout) for the lane's requests in flight
        to end: one begun before the outbox deletion may carry the user, and the vendor must
        have it before it is asked to delete."""
        loop, delivery = asyncio.get_running_loop(), self._pipeline.delivery
        deadline_s = loop.time() + timeout_s
        # A poll: a lane counts what it has in flight but signals no change of the count.
        while delivery.in_flight(name) and loop.time() < deadline_s:  # noqa: ASYNC110
            await asyncio.sleep(QUIET_POLL_S)

    async def _give_up(self, due: DueTarget, reason: str) -> None:
        await self._record(given_up(due, reason, self._clock.now_ms()))

    async def _record(self, update: TargetUpdate) -> str:
        record: Callable[[aiosqlite.Connection], object] = functools.partial(
            regulations_store.record, update=update
        )
        status: str = await self._writer.transact(record)  # type: ignore[arg-type]
        if status != RUNNING:
            self._erased.pop(update.regulation_id, None)
        return status


def _files(delivery: Delivery) -> dict[str, File]:
    """The file destinations' senders, whose files a deletion rewrites."""
    return {name: sender for name, sender in delivery.senders.items() if isinstance(sender, File)}
