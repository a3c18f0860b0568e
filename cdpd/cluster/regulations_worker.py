"""Regulations' deletions on the JetStream backend, worked by one node at a time: the holder
of the `regulations` lease (in the leases bucket, as a warehouse's loads are led).

The holder reads the unfinished regulations (`due.<id>` keys) and works their due targets in
the SQLite backend's order: the `outbox` target (the streams, `cdpd.cluster.erase`) first,
then the identity store (asked of the profiles lease holder, `cdpd.cluster.profile_commands`),
then every warehouse, file and destination (a file target finishes once every node has erased
its own file: `cdpd.cluster.file_erasure`); none of these starts before the first ones have
finished, and a failed first one fails them. A suppressing regulation's `outbox` target waits
`SUPPRESSION_BOUND_S` after its creation, so every node drops the user's messages before the
streams are scanned.

Each attempt's outcome is written into the regulation's record at the revision read (the
record is the fencing token: a former holder that has not noticed its loss cannot overwrite
what the new one wrote), so a new holder continues with the targets not yet finished. A
target that fails is tried again by the delivery retry policy, as on the SQLite backend.

Between passes the holder waits, without asking the cluster anything, until a `due` key
changes (a watch: a regulation created through any node), the earliest unfinished target
comes due (its retry, or the end of its suppression's settling), or `IDLE_PASS_S` passes (what
a lost watch could miss); never less than `POLL_S` after the last pass.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import aiohttp
import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from cdpd.clock import Clock
from cdpd.cluster import erase, file_writers
from cdpd.cluster.file_writers import FileWriter
from cdpd.cluster.layout import Layout
from cdpd.cluster.lease import Lease, lead
from cdpd.cluster.profile_commands import (
    DONE,
    FORGET,
    TAKEN,
    WITHDRAWN,
    Outcome,
    ProfileCommands,
)
from cdpd.cluster.regulation_records import RegulationRecord, TargetState, apply
from cdpd.cluster.regulations import ClusterRegulations
from cdpd.cluster.suppression_feed import SUPPRESSION_BOUND_S
from cdpd.config import Config
from cdpd.destinations.settings import FileDestination
from cdpd.model.timestamps import format_ms, parse_ms
from cdpd.privacy import deletion, regulations_vendors
from cdpd.privacy.regulation_attempts import (
    TargetFailed,
    attempt,
    given_up,
    log_outcome,
    permanent,
    retry_policy,
)
from cdpd.privacy.regulations import (
    EFFECTS,
    FAILED,
    FILE,
    FINISHED,
    FIRST,
    IDENTITY,
    OUTBOX,
    RUNNING,
    UNFINISHED,
    WAREHOUSE,
)
from cdpd.privacy.regulations_store import TargetUpdate
from cdpd.waits import first_of

log = structlog.get_logger("cdpd.privacy")

LEASE_KEY = "regulations"
POLL_S = 0.5  # the shortest wait between two passes
IDLE_PASS_S = 10.0  # the longest
# How long one attempt at the identity target waits for the profiles lease holder: its stage
# may have the stream to catch up on first, and a snapshot to store after.
FORGET_WAIT_S = 60.0


class RegulationLeader:
    """A service (`run(stop)`): while this node holds the lease, work the due targets."""

    def __init__(
        self,
        config: Config,
        js: JetStreamContext,
        layout: Layout,
        book: ClusterRegulations,
        lease: Lease,
        clock: Clock,
        session: aiohttp.ClientSession,
        profile_commands: ProfileCommands,
    ) -> None:
        self._config = config
        self._js = js
        self._layout = layout
        self._book = book
        self.lease = lease
        self._clock = clock
        self._session = session
        self._profile_commands = profile_commands
        self.passes = 0
        self._writers: dict[str, list[FileWriter]] = {}  # by file destination, this pass
        self._outcomes: KeyValue | None = None  # the bucket, once a file target needs it

    async def run(self, stop: asyncio.Event) -> None:
        await lead(self.lease, self._clock, stop, functools.partial(self._lead, stop))

    async def _lead(self, stop: asyncio.Event, should_stop: Callable[[], bool]) -> None:
        async with self._book.due_changes() as changed:
            while not should_stop():
                changed.clear()  # a change from now on is worked in the next pass
                next_at_ms = await self.work_due(should_stop)
                self.passes += 1
                await self._until_next_pass(stop, changed, next_at_ms)

    async def _until_next_pass(
        self, stop: asyncio.Event, changed: asyncio.Event, next_at_ms: int
    ) -> None:
        now_ms = self._clock.now_ms()
        wait_s = min(max((next_at_ms - now_ms) / 1000, POLL_S), IDLE_PASS_S)
        if await self._clock.wait(stop, POLL_S):
            return
        await first_of(
            changed.wait(), stop.wait(), self.lease.lost.wait(), timeout_s=wait_s - POLL_S
        )

    async def work_due(self, should_stop: Callable[[], bool]) -> int:
        """One pass over the unfinished regulations; when the next pass is due (ms)."""
        next_at_ms = self._clock.now_ms() + int(IDLE_PASS_S * 1000)
        self._writers = {}  # read once a pass, whatever the regulations waiting on them
        for regulation_id in await self._book.due_ids():
            if should_stop():
                break
            found = await self._book.read(regulation_id)
            if found is None:  # `due` is written just before the regulation
                next_at_ms = self._clock.now_ms()
                continue
            record, revision = found
            if record.status not in UNFINISHED:
                await self._book.forget(regulation_id)
                continue
            try:
                await self._work(record, revision, should_stop)
            except KeyWrongLastSequenceError:
                log.warning("regulation_written_elsewhere", regulation=regulation_id)
                break  # another holder wrote it: this node has lost the lease
            next_at_ms = min(next_at_ms, self._next_due_ms(record))
        return next_at_ms

    def _next_due_ms(self, record: RegulationRecord) -> int:
        """When the regulation's earliest unfinished target is next worth a look."""
        due = [
            max(parse_ms(t.next_attempt_at), self._settled_at_ms(record, t))
            for t in record.targets
            if t.status in UNFINISHED
        ]
        return min(due, default=self._clock.now_ms() + int(IDLE_PASS_S * 1000))

    async def _work(
        self, record: RegulationRecord, revision: int, should_stop: Callable[[], bool]
    ) -> None:
        users: list[str] | None = None  # read once a target is due
        for target in sorted(record.targets, key=lambda t: t.kind not in FIRST):
            if should_stop():
                return
            if target.status not in UNFINISHED or target.next_attempt_at > self._now():
                continue
            users = users if users is not None else await self._book.subjects(record)
            update = await self._next_state(record, target, users)
            if update is None:
                continue
            apply(record, update)
            revision = await self._book.write(record, revision)
            bound = log.bind(regulation=record.id, target=target.target)
            if update.status == RUNNING and target.kind == FILE:
                bound.info("regulation_target_waiting", waiting_for=update.last_error)
            else:
                log_outcome(bound, update, record.status)

    def _now(self) -> str:
        return format_ms(self._clock.now_ms())

    async def _next_state(
        self, record: RegulationRecord, target: TargetState, users: list[str]
    ) -> TargetUpdate | None:
        """The target's state after this pass; None while it waits."""
        due = record.due(target)
        kinds = FIRST[: FIRST.index(target.kind)] if target.kind in FIRST else FIRST
        before = [t for t in record.targets if t.kind in kinds]
        failed = next((t.kind for t in before if t.status == FAILED), None)
        if failed is not None:
            reason = f"the {failed} deletion failed, so this was not tried"
            return given_up(due, reason, self._clock.now_ms())
        if any(t.status in UNFINISHED for t in before) or self._settling(record, target):
            return None
        if target.kind == FILE:
            return await self._files_state(record, target)
        work = functools.partial(self._erase, record, target, users)
        policy = retry_policy(self._config, target.kind, target.target)
        bound = log.bind(regulation=record.id, target=target.target)
        return await attempt(due, work, policy, self._clock, bound)

    async def _files_state(
        self, record: RegulationRecord, target: TargetState
    ) -> TargetUpdate | None:
        """FINISHED once every node that writes the file, and was seen within `node_gone_s`,
        has erased its own (`cdpd.cluster.file_erasure`); until then RUNNING, saying whom it
        waits for (None while that is what the target already says)."""
        name = target.target.partition(":")[2]
        now_ms = self._clock.now_ms()
        files = (d for d in self._config.destinations if isinstance(d, FileDestination))
        if not any(d.name == name for d in files):
            return given_up(record.due(target), f"no file destination is named {name!r}", now_ms)
        waited, gone = await self._writers_of(name, now_ms)
        erased = await self._erasures(record.id, name, waited)
        owed = [(w, e) for w, e in zip(waited, erased, strict=True) if e is None or e.state != DONE]
        at = self._now()
        first_at = target.first_attempt_at or at
        if owed:
            note = waiting_note(owed)
            if note == target.last_error:
                return None
            return TargetUpdate(
                record.id, target.target, RUNNING, target.attempts, first_at, at, last_error=note
            )
        rows = sum(e.rows for e in erased if e is not None)
        return TargetUpdate(
            record.id,
            target.target,
            FINISHED,
            target.attempts + 1,
            first_at,
            at,
            rows_removed=rows,
            last_error=gone_note(gone, self._config.storage.jetstream.node_gone_s),
            finished_at=at,
        )

    async def _writers_of(
        self, name: str, now_ms: int
    ) -> tuple[list[FileWriter], list[FileWriter]]:
        """The nodes that write the file: those waited for, and those gone (unseen for
        `node_gone_s`)."""
        if name not in self._writers:
            self._writers[name] = await file_writers.writers(self._js, self._layout, name)
        gone_after_ms = round(self._config.storage.jetstream.node_gone_s * 1000)
        waited = [w for w in self._writers[name] if now_ms - w.seen_at_ms <= gone_after_ms]
        return waited, [w for w in self._writers[name] if w not in waited]

    async def _erasures(
        self, regulation_id: str, name: str, writers: list[FileWriter]
    ) -> list[Outcome | None]:
        """What each node wrote of its erasure for the regulation (None: nothing yet)."""
        if self._outcomes is None:
            self._outcomes = await self._js.key_value(self._layout.outcomes_bucket)
        bucket = self._outcomes
        return [await file_writers.erased(bucket, regulation_id, name, w.node_id) for w in writers]

    def _settling(self, record: RegulationRecord, target: TargetState) -> bool:
        """A suppressing regulation's streams are scanned once every node drops the user."""
        return self._clock.now_ms() < self._settled_at_ms(record, target)

    def _settled_at_ms(self, record: RegulationRecord, target: TargetState) -> int:
        if target.kind != OUTBOX or not EFFECTS[record.regulation_type].suppress:
            return 0
        return parse_ms(record.created_at) + int(SUPPRESSION_BOUND_S * 1000)

    async def _forget(self, record: RegulationRecord, target: TargetState, users: list[str]) -> int:
        """Asked of the profiles lease holder, which answers once a snapshot without the
        users' profiles is stored (and the older ones deleted). One command per attempt: a
        later attempt does not wait on an earlier one's outcome."""
        if self._config.identity is None:
            raise permanent("identity resolution is off ([identity] is not configured)")
        outcome = await self._profile_commands.ask(
            FORGET, FORGET_WAIT_S, command_id=f"forget.{record.id}.{target.attempts}", users=users
        )
        if outcome.state == DONE:
            return outcome.rows
        if outcome.state == WITHDRAWN:
            raise TargetFailed(
                f"no profiles lease holder took the deletion within {FORGET_WAIT_S:g} s"
            )
        if outcome.state == TAKEN:
            raise TargetFailed(
                f"the profiles lease holder did not finish the deletion within {FORGET_WAIT_S:g} s"
            )
        raise TargetFailed(outcome.error or outcome.state)

    async def _erase(self, record: RegulationRecord, target: TargetState, users: list[str]) -> int:
        name = target.target.partition(":")[2]
        if target.kind == OUTBOX:
            found_ids = None
            if record.source is not None and any(t.kind == FILE for t in record.targets):
                found_ids = functools.partial(self._book.keep_erased, record.id, target.attempts)
            return await erase.erase_users(self._js, self._layout, users, record.source, found_ids)
        if target.kind == IDENTITY:
            return await self._forget(record, target, users)
        if target.kind == WAREHOUSE:
            warehouse = deletion.warehouse_named(self._config, name)
            if warehouse is None:
                raise permanent(f"no warehouse is named {name!r} any more")
            return await deletion.erase_warehouse_users(
                self._config, warehouse, users, record.source
            )
        destination = next((d for d in self._config.destinations if d.name == name), None)
        if destination is None or isinstance(destination, FileDestination):
            raise permanent(f"no destination is named {name!r} any more")
        sent = await regulations_vendors.forward(self._session, destination, users, record.id)
        if not sent.ok:
            raise TargetFailed(sent.error or "failed", sent.status, sent.retry_after_s)
        return sent.users


def waiting_note(owed: list[tuple[FileWriter, Outcome | None]]) -> str:
    """Whom a file target waits for, and the error a node met, if any."""
    nodes = ", ".join(
        w.node_id + (f" ({e.error})" if e is not None and e.error else "") for w, e in owed
    )
    return f"waiting for {len(owed)} node(s) to erase their file: {nodes}"


def gone_note(gone: list[FileWriter], gone_s: float) -> str | None:
    """Which nodes a finished file target did not wait for (unseen for `node_gone_s`)."""
    if not gone:
        return None
    nodes = ", ".join(f"{w.node_id} (last seen {format_ms(w.seen_at_ms)})" for w in gone)
    return (
        f"not erased by {len(gone)} node(s) unseen for more than node_gone_s = {gone_s:g} s"
        f" (they erase when they return): {nodes}"
    )
