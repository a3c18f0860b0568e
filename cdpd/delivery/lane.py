"""One destination's lane: a consumer of the outbox that sends what its destination is owed.

The lane reads new messages past its position (filtered by the destination's routing rule),
due retries from the ledger, and the messages of replay jobs; `concurrency` workers send them
in batches of `batch_size`, under the lane's rate limit and circuit breaker; a recorder stores
outcomes and moves positions. A message delivered on its first attempt costs no row: the
lane's position passes it (one update per recording, for many batches).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence

import aiohttp
import msgspec
import structlog

from cdpd.clock import Clock
from cdpd.delivery import policy
from cdpd.delivery.action_outcomes import ActionOutcomes
from cdpd.delivery.circuit import Circuit
from cdpd.delivery.recorder import Finish, Recorder
from cdpd.delivery.stats import LaneStats, RateLimit
from cdpd.delivery.store import (
    DeliveryStore,
    LaneReader,
    Outcome,
    Owed,
    Parked,
    ReplayJob,
    RoutingRule,
    lane_consumer,
    replay_consumer,
)
from cdpd.destinations import actions
from cdpd.destinations.actions import Action
from cdpd.destinations.base import Destination as Sender
from cdpd.destinations.base import Result
from cdpd.destinations.settings import Destination, RetryConfig
from cdpd.model.rows import MessageView
from cdpd.model.timestamps import format_ms, parse_ms
from cdpd.outbox.consumers import Progress

log = structlog.get_logger()

PREFETCH_MIN = 100
ERASED = Result(None, "skipped: deleted by a regulation", skipped=True)
PREFETCH_MAX = 2000
FAILURE_LOG_EVERY_S = 10.0

__all__ = ["Lane", "LaneStats", "RateLimit"]


async def _not_yet_delivered(
    outcomes: ActionOutcomes, batch: Sequence[MessageView], prepared: list[actions.Prepared]
) -> list[actions.Prepared]:
    """The prepared actions of a retried delivery, less those that succeeded before."""
    done = await outcomes.done([view.seq for view in batch if view.attempts > 0])
    if not done:
        return prepared
    return [p for p in prepared if p.action not in done.get(p.delivery.seq, ())]


async def _remember_delivered(
    outcomes: ActionOutcomes,
    batch: Sequence[MessageView],
    prepared: Sequence[actions.Prepared],
    results: Sequence[Result],
    combined: Sequence[Result],
    lane: Lane,
) -> None:
    """Of deliveries to be retried, the actions that succeeded this time."""
    retried = {
        view.seq
        for view, result in zip(batch, combined, strict=True)
        if not result.invalid and not result.skipped and _retryable(result)
    }
    succeeded = [
        (item.delivery.seq, item.action)
        for item, result in zip(prepared, results, strict=True)
        if item.delivery.seq in retried and policy.is_success(result.status) and not result.invalid
    ]
    await outcomes.remember(succeeded, format_ms(lane._clock.now_ms()))


class Batch(msgspec.Struct, gc=False):
    """Messages sent in one request, and the range of their consumer's seqs they finish."""

    items: list[Owed]
    consumer: str | None  # None: ledger retries (their rows say where they stand)
    first: int = 0
    last: int = -1
    parked: list[Parked] = msgspec.field(default_factory=list)


class Lane:
    def __init__(
        self,
        config: Destination,
        sender: Sender,
        *,
        actions: list[Action],
        store: DeliveryStore,
        rule: RoutingRule,
        end_seq: Callable[[], int],
        session: aiohttp.ClientSession,
        clock: Clock,
        retry: RetryConfig,
        poll_interval_s: float,
        observe: Callable[[float], None] | None = None,
        rand: Callable[[], float] = random.random,
        transform: Callable[[str, str], str] | None = None,
        action_outcomes: ActionOutcomes | None = None,
    ) -> None:
        self.name = config.name
        # With several actions: which of a waiting delivery's actions already succeeded.
        self._action_outcomes = action_outcomes
        # Destination-scoped transformations: (source, stored payload) -> the payload it gets.
        self._transform = transform
        # Seqs of messages a regulation deleted: read before the deletion, they are not sent
        # (Delivery shares one set among its lanes).
        self.erased: set[int] = set()
        self.stats = LaneStats()
        self._config = config
        self._sender = sender
        self._actions = actions
        self._store = store
        self._rule = rule
        self._end_seq = end_seq
        self._session = session
        self._clock = clock
        self._retry = retry
        self._poll_interval_s = poll_interval_s
        self._rand = rand
        self._observe = observe  # request durations, in seconds, for /metrics
        self._ordered = config.ordering == "user"
        self._limit = RateLimit(config.rate_limit_per_s, clock)
        self._batch_size = config.batch_size
        self._prefetch = min(
            PREFETCH_MAX, max(PREFETCH_MIN, 2 * config.concurrency * config.batch_size)
        )
        self.circuit = Circuit()
        self._work = asyncio.Event()  # new messages, replay or retry: look again
        self._stop = asyncio.Event()
        self._run: _Run | None = None
        self._logged_error: str | None = None
        self._logged_at = 0.0
        self._unlogged = 0

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def work(self) -> asyncio.Event:
        """Set it when the lane may have new work (the writer does after each commit)."""
        return self._work

    def wake(self) -> None:
        self._work.set()

    def stop(self) -> None:
        """Start nothing more; attempts in flight finish."""
        self._stop.set()
        self._work.set()
        if self._run is not None:
            self._run.wake_all()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Until stopped: fill a queue of batches a few rounds ahead, send them with
        `concurrency` workers, record outcomes. After a failure it may be run again: it starts
        over from the positions stored. `lane.stop()` stops it (the delivery service calls it
        for every lane when its own `stop` is set)."""
        if (stop is not None and stop.is_set()) or self.stopping:
            return
        reader = await self._store.reader(self._rule)
        try:
            self._run = _Run(self, reader)
            await self._run.run()
        finally:
            self._run = None
            await reader.close()


class _Run:
    """One run of a lane: its queue, positions and in-flight bookkeeping."""

    def __init__(self, lane: Lane, reader: LaneReader) -> None:
        self.lane = lane
        self.reader = reader
        self.progress: dict[str, Progress] = {}
        self.recorder = Recorder(lane._store, lane._clock, lane.name, self.progress)
        self.queue: deque[Batch] = deque()
        self.queued_items = 0
        self.items = asyncio.Event()  # the queue has batches
        self.room = asyncio.Event()  # the queue is below half: read more
        self.room.set()
        self.read_to: dict[str, int] = {}
        self.jobs: dict[str, ReplayJob] = {}
        self.ledger_busy: set[int] = set()  # ledger seqs queued or in flight
        self.keys_busy: Counter[str] = Counter()  # users with a message queued or in flight
        self.keys_waiting: Counter[str] = Counter()  # users with unfinished ledger rows
        self.probe: asyncio.Event = asyncio.Event()
        self.retry_all = False  # the destination is back: make every waiting retry due
        self.expire_due = False  # a probe failed: give up what waited its whole retry window

    def wake_all(self) -> None:
        for event in (self.items, self.room, self.probe):
            event.set()

    async def run(self) -> None:
        lane = self.lane
        positions = await self.reader.positions()
        own = lane_consumer(lane.name)
        start = positions.get(own)
        self.progress[own] = Progress(start.seq, start.done_ranges) if start else Progress(0)
        self.read_to[own] = self.progress[own].seq
        if lane._ordered:
            self.keys_waiting = await self.reader.unfinished_keys()
        async with asyncio.TaskGroup() as recording:
            recording.create_task(self.recorder.run(), name=f"record-{lane.name}")
            try:
                async with asyncio.TaskGroup() as workers:
                    for number in range(lane._config.concurrency):
                        workers.create_task(self._send_loop(), name=f"{lane.name}-{number}")
                    await self._fill_until_stopped()
            finally:
                self.recorder.close()

    # -- reading ahead ----------------------------------------------------------------------

    async def _fill_until_stopped(self) -> None:
        lane = self.lane
        while not lane.stopping:
            await self.room.wait()
            if lane.stopping:
                return
            lane._work.clear()
            try:
                found = await self._fill(lane._prefetch - self.queued_items)
            except Exception:  # the outbox failed this time (say, locked): later
                log.exception("delivery_read_failed", destination=lane.name)
                found = False
            if not found:
                await self._wait_for_work()

    async def _fill(self, room: int) -> bool:
        """Queue up to `room` messages: due retries first, then replay jobs, then new
        messages. Returns whether anything was queued or finished."""
        lane = self.lane
        if room <= 0:
            self.room.clear()
            return True
        now_at = format_ms(lane._clock.now_ms())
        if self.retry_all:  # the destination is back: what waits for a retry goes now
            self.retry_all = False
            await lane._store.retry_now(lane.name, now_at)
        found = False
        # A row in flight when the read starts may settle before it returns: the read still
        # shows it due as it was, so it is left to the next read.
        in_flight = set(self.ledger_busy)
        due = [o for o in await self.reader.due(now_at, room) if o.view.seq not in in_flight]
        if lane._ordered:
            due = self._one_per_user(due)
        for start in range(0, len(due), lane._batch_size):
            self._enqueue(Batch(due[start : start + lane._batch_size], None))
            found = True
        room -= len(due)
        if room > 0:
            found = await self._fill_replays(room) or found
        room = lane._prefetch - self.queued_items
        if room > 0:
            found = await self._fill_stream(lane_consumer(lane.name), room) or found
        return found

    def _one_per_user(self, due: list[Owed]) -> list[Owed]:
        chosen, seen = [], set()
        for owed in due:
            key = owed.order_key
            if key is not None and (key in seen or self.keys_busy[key]):
                continue
            if key is not None:
                seen.add(key)
            chosen.append(owed)
        return chosen

    async def _fill_replays(self, room: int) -> bool:
        jobs = await self.reader.replay_jobs()
        found = False
        for job in jobs:
            name = replay_consumer(job.id)
            if name not in self.jobs:
                positions = await self.reader.positions()
                start = positions.get(name)
                if start is None:
                    continue
                self.jobs[name] = job
                self.progress[name] = Progress(start.seq, start.done_ranges)
                self.read_to[name] = self.progress[name].seq
            if self.read_to[name] >= job.last_seq:
                continue
            found = await self._fill_stream(name, room, job) or found
            room = self.lane._prefetch - self.queued_items
            if room <= 0:
                break
        return found

    async def _fill_stream(self, name: str, room: int, job: ReplayJob | None = None) -> bool:
        """Read past the consumer's read position; the batches made cover the whole range
        read (messages the destination is not owed included), so finishing them all moves
        the position over it."""
        after = self.read_to[name]
        up_to = self.lane._end_seq() if job is None else job.last_seq
        if up_to <= after:
            return False
        if job is None:
            owed = await self.reader.new_messages(after, up_to, room)
        else:
            owed = await self.reader.replay_messages(job, after, room)
        scanned = up_to if len(owed) < room else owed[-1].view.seq
        progress = self.progress[name]
        if progress.done:
            owed = [o for o in owed if not progress.is_done(o.view.seq)]
        self.read_to[name] = scanned
        batches = self._batches(name, owed, after, scanned)
        for batch in batches:
            if batch.items:
                self._enqueue(batch)
            else:
                self.recorder.finish(Finish(name, batch.first, batch.last, batch.parked))
        return True

    def _batches(self, name: str, owed: list[Owed], after: int, scanned: int) -> list[Batch]:
        size = self.lane._batch_size
        batches: list[Batch] = []
        current = Batch([], name, after + 1)
        for item in owed:
            key = item.order_key
            if key is not None and (self.keys_busy[key] or self.keys_waiting[key]):
                # An earlier message of this user is unfinished: this one waits in the ledger.
                current.parked.append(Parked(item.view.seq, item.view.message_id, key))
                self.keys_waiting[key] += 1
            else:
                current.items.append(item)
                if key is not None:
                    self.keys_busy[key] += 1
            if len(current.items) >= size:
                current.last = item.view.seq
                batches.append(current)
                current = Batch([], name, item.view.seq + 1)
        current.last = scanned
        if current.items or current.parked or current.first <= current.last:
            batches.append(current)
        return batches

    def _enqueue(self, batch: Batch) -> None:
        if batch.consumer is None:
            self.ledger_busy.update(o.view.seq for o in batch.items)
            for owed in batch.items:
                if owed.order_key is not None:
                    self.keys_busy[owed.order_key] += 1
        self.queue.append(batch)
        self.queued_items += len(batch.items)
        self.items.set()
        if self.queued_items >= self.lane._prefetch // 2:
            self.room.clear()

    async def _wait_for_work(self) -> None:
        """Until woken, the next retry is due, or the poll interval has passed."""
        lane = self.lane
        try:
            due_at = await self.reader.next_due_at()
        except Exception:
            log.exception("delivery_read_failed", destination=lane.name)
            due_at = None
        now = lane._clock.now_ms()
        wake_at = now + round(lane._poll_interval_s * 1000)
        if due_at is not None:
            due_ms = parse_ms(due_at)
            if due_ms > now:
                wake_at = min(wake_at, due_ms)
            elif not (self.ledger_busy or self.keys_busy):
                return  # due now (the clock moved while we read): read again
            # else: what is due is in flight or waits behind a user's earlier message, and a
            # recording wakes the lane
        # A deadline, not a timeout: time that passes before the wait starts still counts.
        await lane._clock.wait_until(lane._work, wake_at)

    # -- sending ----------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        lane = self.lane
        while True:
            await self.items.wait()
            if lane.stopping:
                return
            if not await self._may_send():
                continue
            if not self.queue:
                self.items.clear()
                continue
            batch = self.queue.popleft()
            if not self.queue:
                self.items.clear()
            probing = lane.circuit.state == "open"
            if probing:
                lane.circuit.start_probe()
                batch = self._split_probe(batch)
            self.queued_items -= len(batch.items)
            if self.queued_items < lane._prefetch // 2:
                self.room.set()
            await lane._limit.acquire(lane._stop)
            await self._attempt(batch)

    async def _may_send(self) -> bool:
        """Wait while the circuit is open (until its probe) or the lane is paused."""
        lane = self.lane
        circuit = lane.circuit
        now = lane._clock.now_ms()
        if circuit.may_send(now) or circuit.may_probe(now):
            return True
        if self.expire_due:
            self.expire_due = False
            await self._expire()
            return False
        if circuit.state == "probing":  # another worker probes: wait for its verdict
            self.probe.clear()
            await lane._clock.wait(self.probe, lane._poll_interval_s)
            return False
        lane.stats.circuit = circuit.state
        await lane._clock.wait(lane._stop, circuit.wait_ms(now) / 1000)
        return False

    async def _expire(self) -> None:
        """While the circuit stays open, the retry window still runs: what has waited all of
        it is given up (dead, with the reason), so nothing is held forever. Waiting retries
        count from their first attempt, messages never attempted from their arrival."""
        lane = self.lane
        now = lane._clock.now_ms()
        cutoff = format_ms(now - round(lane._retry.retry_window_s * 1000))
        try:
            expired = await lane._store.expire(lane.name, lane._rule, cutoff, format_ms(now))
        except Exception:
            log.exception("delivery_expire_failed", destination=lane.name)
            return
        kept: deque[Batch] = deque()
        given_up = 0
        while self.queue:
            batch = self.queue.popleft()
            if batch.consumer is None and all(
                (o.view.first_attempt_at or "") < cutoff for o in batch.items
            ):  # their ledger rows were just given up
                self.ledger_busy.difference_update(o.view.seq for o in batch.items)
                self._release_keys(batch)
                self.queued_items -= len(batch.items)
            elif batch.consumer is not None and all(o.received_at < cutoff for o in batch.items):
                await self._give_up(batch, now)
                given_up += len(batch.items)
            else:
                kept.append(batch)
        self.queue = kept
        lane.stats.dead += expired
        if expired or given_up:
            log.warning(
                "delivery_expired",
                destination=lane.name,
                retries=expired,
                unsent=given_up,
                reason="the destination stayed unreachable for the whole retry window",
            )
            self.room.set()

    async def _give_up(self, batch: Batch, now_ms: int) -> None:
        at = format_ms(now_ms)
        error = "never sent: the destination stayed unreachable for the whole retry window"
        outcomes = [
            Outcome(
                seq=o.view.seq,
                message_id=o.view.message_id,
                order_key=o.order_key,
                attempt=0,
                started_at=at,
                duration_ms=0.0,
                status=None,
                error=error,
                state="dead",
                first_attempt_at=o.received_at,
                next_attempt_at=at,
                finished_at=at,
                origin=_origin(batch.consumer),
            )
            for o in batch.items
        ]
        self.queued_items -= len(batch.items)
        assert batch.consumer is not None
        await self.recorder.record(
            outcomes, Finish(batch.consumer, batch.first, batch.last, batch.parked)
        )
        self._release_keys(batch)
        self.lane.stats.dead += len(outcomes)

    def _release_keys(self, batch: Batch) -> None:
        for owed in batch.items:
            key = owed.order_key
            if key is not None:
                self.keys_busy[key] -= 1
                if self.keys_busy[key] <= 0:
                    del self.keys_busy[key]

    def _split_probe(self, batch: Batch) -> Batch:
        """A probe is one message; the rest of its batch goes back to the queue's head."""
        if len(batch.items) <= 1:
            return batch
        first, rest = batch.items[0], batch.items[1:]
        if batch.consumer is None:
            self.queue.appendleft(Batch(rest, None))
            self.items.set()
            return Batch([first], None)
        probe = Batch([first], batch.consumer, batch.first, first.view.seq)
        self.queue.appendleft(
            Batch(rest, batch.consumer, first.view.seq + 1, batch.last, batch.parked)
        )
        self.items.set()
        return probe

    async def _attempt(self, batch: Batch) -> None:
        lane = self.lane
        stats = lane.stats
        stats.in_flight += len(batch.items)
        try:
            started_ms = lane._clock.now_ms()
            began = time.perf_counter()
            results = await self._send([o.view for o in batch.items])
            duration_ms = (time.perf_counter() - began) * 1000
            if lane._observe is not None:
                lane._observe(duration_ms / 1000)
            origin = _origin(batch.consumer)
            distinct = list({id(r): r for r in results}.values())
            if (
                origin != "ledger"
                and all(_delivered(r) for r in distinct)
                and not any(o.has_row for o in batch.items)
            ):
                # The common case: messages without a ledger row delivered on their first
                # attempt leave none, only a position that moves: nothing to decide one by one.
                outcomes = None
            else:
                outcomes = self._outcomes(batch.items, results, started_ms, duration_ms, origin)
            self._judge_destination(distinct)
            finish = None
            if batch.consumer is not None:
                finish = Finish(batch.consumer, batch.first, batch.last, batch.parked)
            await self.recorder.record(outcomes or (), finish)
            self._settle(batch, outcomes)
            if outcomes is None:
                stats.attempts += 1
                stats.latencies_ms.append(duration_ms)
                stats.delivered += len(batch.items)
                stats.unhealthy = False
            else:
                self._count(outcomes, duration_ms)
            async with stats.recorded:
                stats.recorded.notify_all()
        finally:
            stats.in_flight -= len(batch.items)

    def _judge_destination(self, results: Sequence[Result]) -> None:
        """Feed the circuit: the request failed as a whole when every result is a retryable
        failure (a connection error, a timeout, 408, 429, 5xx)."""
        lane = self.lane
        circuit = lane.circuit
        now = lane._clock.now_ms()
        failed = [
            r
            for r in results
            if not r.invalid and not r.skipped and r.parked_until_ms is None and _retryable(r)
        ]
        if results and len(failed) == len(results):
            worst = failed[0]
            was = circuit.state
            circuit.failed(now, worst.retry_after_s, worst.status)
            if was == "probing":
                self.expire_due = True
            if circuit.state == "open" and was == "closed":
                log.warning(
                    "delivery_circuit_open",
                    destination=lane.name,
                    failures_in_a_row=circuit.failures_in_a_row,
                    probe_in_s=circuit.probe_interval_s(),
                )
        elif circuit.succeeded():
            log.info("delivery_circuit_closed", destination=lane.name)
            self.retry_all = True
            lane._work.set()
        lane.stats.circuit = circuit.state
        self.probe.set()

    def _settle(self, batch: Batch, outcomes: list[Outcome] | None) -> None:
        """The batch is recorded: its users and ledger rows are free again (`outcomes` None:
        every message was delivered)."""
        if outcomes is None and not self.lane._ordered and batch.consumer is not None:
            self._finish_job_if_done(batch)
            return
        for index, owed in enumerate(batch.items):
            key = owed.order_key
            if batch.consumer is None:
                self.ledger_busy.discard(owed.view.seq)
            if key is None:
                continue
            self.keys_busy[key] -= 1
            if self.keys_busy[key] <= 0:
                del self.keys_busy[key]
            was_waiting = owed.from_ledger
            waits = outcomes is not None and outcomes[index].state == "retrying"
            self.keys_waiting[key] += int(waits) - int(was_waiting)
            if self.keys_waiting[key] <= 0:
                del self.keys_waiting[key]
        self._finish_job_if_done(batch)
        if self.lane._ordered or batch.consumer is None:
            self.lane._work.set()  # a user's next message, or a retry, may go now

    def _finish_job_if_done(self, batch: Batch) -> None:
        if batch.consumer is not None and batch.consumer in self.jobs:
            job = self.jobs[batch.consumer]
            if self.progress[batch.consumer].seq >= job.last_seq:
                self.recorder.finish_job(job.id)
                del self.jobs[batch.consumer]

    async def _send(self, batch: list[MessageView]) -> list[Result]:
        erased = self.lane.erased
        if erased and any(view.seq in erased for view in batch):
            kept = [view for view in batch if view.seq not in erased]
            sent = iter(await self._send_views(kept) if kept else [])
            return [ERASED if view.seq in erased else next(sent) for view in batch]
        return await self._send_views(batch)

    async def _send_views(self, batch: list[MessageView]) -> list[Result]:
        """Prepare each message for its actions, send, and make one result per message. A
        failure of cdpd's own (a bug in a mapping, say) is retried like a network error."""
        try:
            if self.lane._transform is not None:
                batch = [self._transformed(view) for view in batch]
            prepared = actions.prepare(self.lane._actions, batch)
            outcomes = self.lane._action_outcomes
            if outcomes is not None:
                prepared = await _not_yet_delivered(outcomes, batch, prepared)
            ready = [item for item in prepared if item.problem is None]
            sent = iter(await self.lane._sender.send(self.lane._session, ready) if ready else [])
            results = [
                next(sent) if item.problem is None else Result(None, item.problem, invalid=True)
                for item in prepared
            ]
            combined = actions.combine(batch, prepared, results)
            if outcomes is not None:
                await _remember_delivered(outcomes, batch, prepared, results, combined, self.lane)
            return combined
        except Exception as exc:
            log.exception("delivery_send_failed", destination=self.lane.name)
            return [Result(None, f"cdpd failed to send it: {type(exc).__name__}: {exc}")] * len(
                batch
            )

    def _transformed(self, view: MessageView) -> MessageView:
        """The destination's own copy, after its transformations (a payload that does not
        decode goes as it is: preparing it then says why it cannot be sent)."""
        assert self.lane._transform is not None
        try:
            payload = self.lane._transform(view.source, view.payload)
        except msgspec.DecodeError:
            return view
        return view if payload is view.payload else msgspec.structs.replace(view, payload=payload)

    def _outcomes(
        self,
        batch: Sequence[Owed],
        results: Sequence[Result],
        started_ms: int,
        duration_ms: float,
        origin: str,
    ) -> list[Outcome]:
        """One outcome per message. Messages of a batch that share their history and result
        share the verdict too (and so retry together), so it is decided once."""
        now_ms = self.lane._clock.now_ms()
        started_at = format_ms(started_ms)
        duration_ms = round(duration_ms, 3)
        verdicts: dict[tuple[int, str | None, int], tuple[str, str | None, str, str, str | None]]
        verdicts = {}
        outcomes = []
        for owed, result in zip(batch, results, strict=True):
            view = owed.view
            key = (view.attempts, view.first_attempt_at, id(result))
            verdict = verdicts.get(key)
            if verdict is None:
                verdict = verdicts[key] = self._verdict(owed, result, started_at, now_ms)
            state, error, first_at, next_at, finished_at = verdict
            outcomes.append(
                Outcome(
                    seq=view.seq,
                    message_id=view.message_id,
                    order_key=owed.order_key,
                    attempt=view.attempts + 1,
                    started_at=started_at,
                    duration_ms=duration_ms,
                    status=result.status,
                    error=error,
                    state=state,
                    first_attempt_at=first_at,
                    next_attempt_at=next_at,
                    finished_at=finished_at,
                    origin=origin,
                )
            )
        return outcomes

    def _verdict(
        self, owed: Owed, result: Result, started_at: str, now_ms: int
    ) -> tuple[str, str | None, str, str, str | None]:
        view = owed.view
        first_at = view.first_attempt_at or started_at
        if result.skipped:
            decision = policy.Decision("delivered", None, "nothing to send")
        elif result.invalid:
            decision = policy.Decision("dead", None, "the destination cannot take it as it is")
        elif result.parked_until_ms is not None and result.parked_until_ms > now_ms:
            decision = policy.Decision(
                "retrying", result.parked_until_ms, "parked until the destination's quota resets"
            )
            # The retry window counts from when the destination takes messages again.
            first_at = format_ms(result.parked_until_ms)
        else:
            decision = policy.decide(
                self.lane._retry,
                status=result.status,
                attempt=view.attempts + 1,
                first_attempt_ms=parse_ms(first_at),
                now_ms=now_ms,
                retry_after_s=result.retry_after_s,
                rand=self.lane._rand,
            )
        now_at = format_ms(now_ms)
        return (
            decision.verdict,
            result.error if result.skipped else _error(result, decision),
            first_at,
            format_ms(decision.next_attempt_ms or now_ms),
            None if decision.verdict == "retrying" else now_at,
        )

    def _count(self, outcomes: list[Outcome], duration_ms: float) -> None:
        stats = self.lane.stats
        stats.attempts += 1
        stats.latencies_ms.append(duration_ms)
        failed = None
        failures = 0
        for outcome in outcomes:
            if outcome.state == "delivered":
                stats.delivered += 1
                stats.unhealthy = False
                continue
            failures += 1
            failed = outcome
            stats.errors_by_status[str(outcome.status or "network")] += 1
            if policy.marks_unhealthy(outcome.status, outcome.error):
                stats.unhealthy = True
            if outcome.state == "dead":
                stats.dead += 1
            else:
                stats.retried += 1
        if failed is not None:
            stats.last_error = failed.error
            stats.last_error_status = failed.status
            stats.last_error_message_id = failed.message_id
            stats.last_error_at = failed.started_at
            self._log_failure(failed, failures)

    def _log_failure(self, outcome: Outcome, count: int) -> None:
        """One line per failure, but at most one per FAILURE_LOG_EVERY_S per lane while the
        error stays the same (a dead destination would otherwise flood the log)."""
        lane = self.lane
        now = time.monotonic()
        same = outcome.error == lane._logged_error
        if same and now - lane._logged_at < FAILURE_LOG_EVERY_S:
            lane._unlogged += count
            return
        log.warning(
            "delivery_failed",
            destination=lane.name,
            status=outcome.status,
            error=outcome.error,
            outcome=outcome.state,
            message_id=outcome.message_id,
            failed=count,
            similar_since_last_line=lane._unlogged,
        )
        lane._logged_error, lane._logged_at, lane._unlogged = outcome.error, now, 0


def _origin(consumer: str | None) -> str:
    if consumer is None:
        return "ledger"
    return "replay" if consumer.startswith("replay:") else "stream"


def _delivered(result: Result) -> bool:
    return result.skipped or (policy.is_success(result.status) and not result.invalid)


def _retryable(result: Result) -> bool:
    return not policy.is_success(result.status) and policy.is_retryable(result.status)


def _error(result: Result, decision: policy.Decision) -> str | None:
    if decision.verdict == "delivered":
        return None
    text = result.error or f"HTTP {result.status}"
    return text if decision.verdict == "retrying" else f"{text} ({decision.reason})"
