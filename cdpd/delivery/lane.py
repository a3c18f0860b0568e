"""One destination's lane: claims its due deliveries, sends them, records every attempt.

Each lane has its own concurrency cap, rate limit, batch size and timeout, and its own tasks, so
a slow or dead destination only ever fills its own lane.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence

import aiohttp
import msgspec
import structlog

from cdpd.clock import Clock
from cdpd.delivery import policy, store
from cdpd.delivery.store import Claimed, Outcome
from cdpd.destinations import actions
from cdpd.destinations.actions import Action
from cdpd.destinations.base import Destination as Sender
from cdpd.destinations.base import Result
from cdpd.destinations.settings import Destination, RetryConfig
from cdpd.model.timestamps import format_ms, parse_ms
from cdpd.outbox.writer import OutboxWriter

log = structlog.get_logger()

LATENCY_SAMPLES = 2048
PREFETCH_MIN = 100
PREFETCH_MAX = 2000
RECORD_BACKOFF_MAX_S = 30.0
FAILURE_LOG_EVERY_S = 10.0


class LaneStats:
    """What the lane has seen since the daemon started (the outbox holds the durable counts)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.attempts = 0
        self.delivered = 0
        self.retried = 0
        self.dead = 0
        self.errors_by_status: Counter[str] = Counter()
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.last_error: str | None = None
        self.last_error_status: int | None = None
        self.last_error_message_id: str | None = None
        self.last_error_at: str | None = None
        self.unhealthy = False
        # Notified after every recorded attempt, for whoever watches the lane (tests do).
        self.recorded = asyncio.Condition()

    def percentile_ms(self, fraction: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class RateLimit:
    """A token bucket of `per_s` requests a second (0: no limit), on the lane's clock."""

    def __init__(self, per_s: float, clock: Clock) -> None:
        self._per_s = per_s
        self._clock = clock
        self._tokens = max(1.0, per_s)
        self._updated_ms = clock.now_ms()

    async def acquire(self, interrupt: asyncio.Event) -> None:
        """Wait for a token, or until `interrupt` is set."""
        if self._per_s <= 0:
            return
        while True:
            now = self._clock.now_ms()
            self._tokens = min(
                max(1.0, self._per_s), self._tokens + (now - self._updated_ms) / 1000 * self._per_s
            )
            self._updated_ms = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            if await self._clock.wait(interrupt, (1 - self._tokens) / self._per_s):
                return


class Lane:
    def __init__(
        self,
        config: Destination,
        sender: Sender,
        *,
        actions: list[Action],
        writer: OutboxWriter,
        session: aiohttp.ClientSession,
        clock: Clock,
        retry: RetryConfig,
        poll_interval_s: float,
        observe: Callable[[float], None] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.name = config.name
        self.stats = LaneStats()
        self._config = config
        self._sender = sender
        self._actions = actions
        self._writer = writer
        self._session = session
        self._clock = clock
        self._retry = retry
        self._poll_interval_s = poll_interval_s
        self._rand = rand
        self._observe = observe  # request durations, in seconds, for /metrics
        self._limit = RateLimit(config.rate_limit_per_s, clock)
        self._batch = config.batch_size
        self._prefetch = min(
            PREFETCH_MAX, max(PREFETCH_MIN, 2 * config.concurrency * config.batch_size)
        )
        self._stopping = False
        self._stopped = asyncio.Event()
        self._work = asyncio.Event()
        self._fresh_run_state()
        self._logged_error: str | None = None
        self._logged_at = 0.0
        self._unlogged = 0

    def _fresh_run_state(self) -> None:
        self._recorder = _Recorder(self._writer, self._clock, self.name)
        self._queue: deque[Claimed] = deque()
        self._items = asyncio.Event()  # the queue has deliveries to send
        self._low = asyncio.Event()  # the queue is below half: claim more
        self._low.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def wake(self) -> None:
        """New deliveries may be due (the router made some, or replay re-queued some)."""
        self._work.set()

    def stop(self) -> None:
        """Claim nothing more; attempts in flight finish."""
        self._stopping = True
        for event in (self._stopped, self._work, self._items, self._low):
            event.set()

    async def run(self) -> None:
        """`concurrency` workers send what a filler claims ahead of them (a few rounds'
        worth, topped up below half), and a recorder stores their outcomes. May be run again
        after it failed."""
        self._fresh_run_state()
        async with asyncio.TaskGroup() as recording:
            recording.create_task(self._recorder.run(), name=f"record-{self.name}")
            try:
                async with asyncio.TaskGroup() as workers:
                    for number in range(self._config.concurrency):
                        workers.create_task(self._send_loop(), name=f"{self.name}-{number}")
                    await self._fill_until_stopped()
            finally:
                self._recorder.close()  # after the last attempt has handed in its outcome
        unsent = [item.id for item in self._queue]
        self._queue.clear()
        if unsent:
            try:
                await self._writer.transact(functools.partial(store.release, ids=unsent))
            except Exception:  # they go back at the next start instead
                log.exception("delivery_release_failed", destination=self.name)

    async def _fill_until_stopped(self) -> None:
        while not self._stopping:
            await self._low.wait()
            if self._stopping:
                return
            try:
                claimed = await self._claim(self._prefetch - len(self._queue))
            except Exception:  # the outbox failed this time (say, locked or full): later
                log.exception("delivery_claim_failed", destination=self.name)
                claimed = []
            if claimed:
                self._queue.extend(claimed)
                self._items.set()
                if len(self._queue) >= self._prefetch // 2:
                    self._low.clear()
            else:
                await self._wait_for_work()

    async def _send_loop(self) -> None:
        while True:
            await self._items.wait()
            if self._stopping:
                return
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._batch))]
            if not self._queue:
                self._items.clear()
            if len(self._queue) < self._prefetch // 2:
                self._low.set()
            if not batch:
                continue
            await self._limit.acquire(self._stopped)
            if self._stopping:
                self._queue.extendleft(reversed(batch))  # released with the rest
                return
            await self._attempt(batch)

    async def _claim(self, limit: int) -> list[Claimed]:
        claim = functools.partial(
            store.claim,
            destination=self.name,
            now_at=format_ms(self._clock.now_ms()),
            limit=limit,
            ordered=self._config.ordering == "user",
        )
        return await self._writer.transact(claim)

    async def _wait_for_work(self) -> None:
        """Until woken, the next delivery is due, or the poll interval has passed."""
        try:
            due_at = await self._writer.transact(
                functools.partial(
                    store.next_due_at,
                    destination=self.name,
                    ordered=self._config.ordering == "user",
                )
            )
        except Exception:
            log.exception("delivery_claim_failed", destination=self.name)
            due_at = None
        timeout_s = self._poll_interval_s
        if due_at is not None:
            timeout_s = min(timeout_s, max(0.0, (parse_ms(due_at) - self._clock.now_ms()) / 1000))
        await self._clock.wait(self._work, timeout_s)
        self._work.clear()

    async def _attempt(self, batch: list[Claimed]) -> None:
        self.stats.in_flight += len(batch)
        try:
            started_ms = self._clock.now_ms()
            began = time.perf_counter()
            results = await self._send(batch)
            duration_ms = (time.perf_counter() - began) * 1000
            if self._observe is not None:
                self._observe(duration_ms / 1000)
            outcomes = self._outcomes(batch, results, started_ms, duration_ms)
            await self._recorder.record(outcomes)
            if self._config.ordering == "user":
                # A user's later messages wait while this batch is in flight, and the filler
                # found nothing due meanwhile: now that it is recorded, they may be.
                self._work.set()
            self._count(outcomes, duration_ms)
            async with self.stats.recorded:
                self.stats.recorded.notify_all()
        finally:
            self.stats.in_flight -= len(batch)

    async def _send(self, batch: list[Claimed]) -> list[Result]:
        """Prepare each delivery for its actions, send, and make one result per delivery. A
        failure of cdpd's own (a bug in a mapping, say) is retried like a network error."""
        try:
            return await self._prepare_and_send(batch)
        except Exception as exc:
            log.exception("delivery_send_failed", destination=self.name)
            return [Result(None, f"cdpd failed to send it: {type(exc).__name__}: {exc}")] * len(
                batch
            )

    async def _prepare_and_send(self, batch: list[Claimed]) -> list[Result]:
        prepared = actions.prepare(self._actions, batch)
        ready = [item for item in prepared if item.problem is None]
        sent = iter(await self._sender.send(self._session, ready) if ready else [])
        results = [
            next(sent) if item.problem is None else Result(None, item.problem, invalid=True)
            for item in prepared
        ]
        return actions.combine(batch, prepared, results)

    def _outcomes(
        self,
        batch: Sequence[Claimed],
        results: Sequence[Result],
        started_ms: int,
        duration_ms: float,
    ) -> list[Outcome]:
        """One outcome per delivery. Items of a batch that share their history and result
        share the verdict too (and so retry together), so it is decided once."""
        now_ms = self._clock.now_ms()
        started_at = format_ms(started_ms)
        duration_ms = round(duration_ms, 3)
        verdicts: dict[tuple[int, str | None, int], _Verdict] = {}
        outcomes = []
        for item, result in zip(batch, results, strict=True):
            key = (item.attempts, item.first_attempt_at, id(result))
            verdict = verdicts.get(key)
            if verdict is None:
                verdict = verdicts[key] = self._verdict(item, result, started_at, now_ms)
            outcomes.append(
                Outcome(
                    delivery_id=item.id,
                    destination=self.name,
                    message_id=item.message_id,
                    attempt=item.attempts + 1,
                    started_at=started_at,
                    duration_ms=duration_ms,
                    status=result.status,
                    error=verdict.error,
                    state=verdict.state,
                    first_attempt_at=verdict.first_attempt_at,
                    next_attempt_at=verdict.next_attempt_at,
                    finished_at=verdict.finished_at,
                )
            )
        return outcomes

    def _verdict(self, item: Claimed, result: Result, started_at: str, now_ms: int) -> _Verdict:
        first_at = item.first_attempt_at or started_at
        if result.skipped:
            decision = policy.Decision("delivered", None, "nothing to send")
        elif result.invalid:
            decision = policy.Decision("dead", None, "the destination cannot take it as it is")
        else:
            decision = policy.decide(
                self._retry,
                status=result.status,
                attempt=item.attempts + 1,
                first_attempt_ms=parse_ms(first_at),
                now_ms=now_ms,
                retry_after_s=result.retry_after_s,
                rand=self._rand,
            )
        now_at = format_ms(now_ms)
        return _Verdict(
            state=decision.verdict,
            error=result.error if result.skipped else _error(result, decision),
            first_attempt_at=first_at,
            next_attempt_at=format_ms(decision.next_attempt_ms or now_ms),
            finished_at=None if decision.verdict == "retrying" else now_at,
        )

    def _count(self, outcomes: list[Outcome], duration_ms: float) -> None:
        stats = self.stats
        stats.attempts += 1
        stats.latencies_ms.append(duration_ms)
        for outcome in outcomes:
            if outcome.state == "delivered":
                stats.delivered += 1
                stats.unhealthy = False
                continue
            stats.errors_by_status[str(outcome.status or "network")] += 1
            stats.last_error = outcome.error
            stats.last_error_status = outcome.status
            stats.last_error_message_id = outcome.message_id
            stats.last_error_at = outcome.started_at
            if policy.marks_unhealthy(outcome.status):
                stats.unhealthy = True
            if outcome.state == "dead":
                stats.dead += 1
            else:
                stats.retried += 1
        failed = [outcome for outcome in outcomes if outcome.state != "delivered"]
        if failed:
            self._log_failure(failed[0], len(failed))

    def _log_failure(self, outcome: Outcome, count: int) -> None:
        """One line per failure, but at most one per FAILURE_LOG_EVERY_S per lane while the
        error stays the same (a dead destination would otherwise flood the log)."""
        now = time.monotonic()
        same = outcome.error == self._logged_error
        if same and now - self._logged_at < FAILURE_LOG_EVERY_S:
            self._unlogged += count
            return
        log.warning(
            "delivery_failed",
            destination=self.name,
            status=outcome.status,
            error=outcome.error,
            outcome=outcome.state,
            message_id=outcome.message_id,
            failed=count,
            similar_since_last_line=self._unlogged,
        )
        self._logged_error, self._logged_at, self._unlogged = outcome.error, now, 0


class _Verdict(msgspec.Struct, frozen=True, gc=False):
    state: str
    error: str | None
    first_attempt_at: str
    next_attempt_at: str
    finished_at: str | None


class _Recorder:
    """Stores outcomes for a lane's attempts, all that have finished meanwhile in one
    operation. An outcome is stored before its attempt frees its concurrency slot, so a
    delivery is never attempted again before its last attempt is on disk."""

    def __init__(self, writer: OutboxWriter, clock: Clock, destination: str) -> None:
        self._writer = writer
        self._clock = clock
        self._destination = destination
        self._pending: list[tuple[list[Outcome], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._closed = False

    async def record(self, outcomes: list[Outcome]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((outcomes, done))
        self._wake.set()
        await done

    def close(self) -> None:
        self._closed = True
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending:
                await self._flush()
            elif self._closed:
                return

    async def _flush(self) -> None:
        """Store the pending outcomes, trying again (with a growing pause) for as long as the
        outbox refuses: the attempts wait, so nothing is sent twice meanwhile. Only a stop
        gives up; the deliveries are then still in flight and go back at the next start."""
        group, self._pending = self._pending, []
        outcomes = [outcome for batch, _ in group for outcome in batch]
        pause_s = 0.5
        while True:
            try:
                await self._writer.transact(functools.partial(store.record, outcomes=outcomes))
                break
            except Exception as exc:  # e.g. a full or locked disk
                log.error(
                    "delivery_record_failed",
                    destination=self._destination,
                    error=str(exc),
                    outcomes=len(outcomes),
                )
                if self._closed:
                    break
                await self._clock.wait(self._stop, pause_s)
                pause_s = min(RECORD_BACKOFF_MAX_S, pause_s * 2)
        for _, done in group:
            if not done.done():
                done.set_result(None)
        self._wake.set()  # look again: more may have arrived during the write


def _error(result: Result, decision: policy.Decision) -> str | None:
    if decision.verdict == "delivered":
        return None
    text = result.error or f"HTTP {result.status}"
    return text if decision.verdict == "retrying" else f"{text} ({decision.reason})"
