"""One destination's lane on the JetStream backend: it reads batches from the destination's
durable consumer, shared by every node, through the delivery store (cdpd/cluster/store.py), and
records each message's outcome there only after the destination's verdict: delivered is acked,
a retryable failure is nak'ed with the retry policy's delay (`delivery/policy.py`), a message
given up is published to the dead-letter stream and terminated; what is not a first-attempt
success gets its row in the ledger, with its attempts. A node that dies leaves its unacked
messages to be redelivered to another node after `ack_wait`.

`ordering = "user"` uses one consumer per partition subject (a user's messages all share one)
with `max_ack_pending = 1`: one message of a partition is out at a time, cluster-wide, and a
failed one is retried in place by the node holding it (`_hold`; each failed attempt still goes
to the ledger), so nothing later of that
partition overtakes it on any node. The price is per-partition throughput (one request per
message per partition at a time; raise `partitions` for more parallelism). A larger
`max_ack_pending` would not do: two nodes' pull requests can split a partition's next messages
between them, and their requests then race."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
import msgspec
import nats.errors
import structlog
from nats.js.errors import NotFoundError

from cdpd.clock import Clock
from cdpd.cluster.reader import JetStreamLaneReader
from cdpd.cluster.settle import Verdict, verdict
from cdpd.cluster.shared import GlobalRateLimit, SharedCircuit
from cdpd.cluster.store import JetStreamDeliveryStore
from cdpd.delivery import policy
from cdpd.delivery.stats import LaneStats
from cdpd.delivery.store import Outcome, Owed, Recording, ReplayJob, RoutingRule, replay_consumer
from cdpd.destinations import actions
from cdpd.destinations.actions import Action
from cdpd.destinations.base import Destination as Sender
from cdpd.destinations.base import Result
from cdpd.destinations.settings import Destination, RetryConfig
from cdpd.model.rows import MessageView
from cdpd.model.timestamps import format_ms, parse_ms

log = structlog.get_logger()

HOLD_TICK_S = 0.5
REPLAY_CHECK_S = 2.0  # how often a lane looks for replay jobs
EVERY_SEQ = 2**63 - 1


class Attempted(msgspec.Struct, frozen=True, gc=False):
    """When an attempt started and how long it took, for its outcome's row."""

    started_at: str
    duration_ms: float


class JetStreamLane:
    def __init__(
        self,
        config: Destination,
        sender: Sender,
        *,
        actions: list[Action],
        rule: RoutingRule,
        store: JetStreamDeliveryStore,
        circuit: SharedCircuit,
        rate: GlobalRateLimit,
        session: aiohttp.ClientSession,
        clock: Clock,
        retry: RetryConfig,
        partitions: int,
        transform: Callable[[str, str], str] | None = None,
        observe: Callable[[float], None] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.name = config.name
        self.stats = LaneStats()
        self.shared = circuit
        self._config = config
        self._sender = sender
        self._actions = actions
        self._rule = rule
        self._store = store
        self._rate = rate
        self._session = session
        self._clock = clock
        self._retry = retry
        self._partitions = partitions
        self._ack_wait_s = max(store.ack_wait_s, 2 * config.timeout_s)
        self._transform = transform
        self._observe = observe
        self._rand = rand
        self._ordered = config.ordering == "user"
        self._sending = asyncio.Semaphore(config.concurrency)

    # -- running ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self._store.ensure_consumers(self._config)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._replays(stop), name=f"jsd-{self.name}-replays")
            if not self._ordered:
                await self._consume(None, stop)
                return
            for partition in range(self._partitions):
                tasks.create_task(
                    self._consume(partition, stop), name=f"jsd-{self.name}-p{partition}"
                )

    async def _consume(self, partition: int | None, stop: asyncio.Event) -> None:
        reader = await self._store.reader(self._rule, partition, holding=self._ordered)
        try:
            if self._ordered:
                await self._fetch_loop(reader, stop, lambda batch: self._hold(reader, batch, stop))
            else:
                async with asyncio.TaskGroup() as workers:
                    queue: asyncio.Queue[list[Owed]] = asyncio.Queue(self._config.concurrency)
                    for _ in range(self._config.concurrency):
                        workers.create_task(self._work(queue, stop))
                    await self._fetch_loop(reader, stop, queue.put)
                    for _ in range(self._config.concurrency):
                        await queue.put([])  # each worker stops after what it holds
        finally:
            await reader.close()  # what it holds unsettled goes back at once

    async def _fetch_loop(
        self,
        reader: JetStreamLaneReader,
        stop: asyncio.Event,
        handle: Callable[[list[Owed]], Awaitable[None]],
    ) -> None:
        while not stop.is_set():
            size, probe = await self._may_take(stop)
            if size == 0:
                continue
            # Messages handed back first; reading new ones waits when there are none.
            batch = await reader.due(format_ms(self._clock.now_ms()), size)
            if not batch:
                batch = await reader.new_messages(0, EVERY_SEQ, size)
            if not batch:
                if probe:  # nothing to probe with: the next message may probe
                    await self._give_back_probe()
                continue
            await handle(batch)

    async def _may_take(self, stop: asyncio.Event) -> tuple[int, bool]:
        """How many messages to take now, and whether they are a probe: a batch when the
        shared circuit is closed, one when this node won the probe, none (after waiting a
        little) otherwise."""
        shared = self.shared
        try:
            await shared.refresh()
        except Exception as exc:  # the bucket is unreachable for now: keep the last state
            log.warning("delivery_circuit_unreadable", destination=self.name, error=repr(exc))
        now = self._clock.now_ms()
        if shared.circuit.may_send(now):
            return (1 if self._ordered else self._config.batch_size), False
        if shared.circuit.may_probe(now) and await shared.claim_probe():
            return 1, True
        wait_s = min(max(shared.circuit.wait_ms(now) / 1000, 0.05), 0.5)
        await self._clock.wait(stop, wait_s)
        return 0, False

    async def _give_back_probe(self) -> None:
        circuit = self.shared.circuit
        if circuit.state == "probing":
            # Due again now, under a new claim key (a claim names its probe time).
            circuit.state, circuit.probe_at_ms = "open", self._clock.now_ms()
            try:
                await self.shared.publish()
            except Exception as exc:
                log.warning("delivery_circuit_unwritable", destination=self.name, error=repr(exc))

    async def _work(self, queue: asyncio.Queue[list[Owed]], stop: asyncio.Event) -> None:
        while True:
            batch = await queue.get()
            if not batch:
                return
            await self._deliver(batch)

    # -- replay jobs: each read from its own consumer, beside the live messages --------------

    async def _replays(self, stop: asyncio.Event) -> None:
        """Every node's lane works on the destination's replay jobs (sharing each job's
        consumer), and ends a job once its consumer has passed the job's last message."""
        reader = await self._store.reader(self._rule)
        try:
            while not stop.is_set():
                for job in await reader.replay_jobs():
                    await self._replay(reader, job, stop)
                await self._clock.wait(stop, REPLAY_CHECK_S)
        finally:
            await reader.close()

    async def _replay(
        self, reader: JetStreamLaneReader, job: ReplayJob, stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            size, _ = await self._may_take(stop)
            if size == 0:
                continue
            try:
                batch = await reader.replay_messages(job, 0, size)
            except (NotFoundError, nats.errors.Error) as exc:  # ended by another node meanwhile
                log.info("delivery_replay_gone", destination=self.name, job=job.id, error=repr(exc))
                return
            if batch:
                await self._deliver(batch, origin="replay")
                continue
            position = (await reader.positions()).get(replay_consumer(job.id))
            if position is not None and position.seq >= job.last_seq:
                await self._store.record(
                    Recording(self.name, finished_jobs=[job.id], at=self._now_at())
                )
                log.info("delivery_replay_finished", destination=self.name, job=job.id)
            return

    # -- unordered: record each message's outcome on its verdict -----------------------------

    async def _deliver(self, owed: list[Owed], origin: str | None = None) -> None:
        results, attempted = await self._attempt([o.view for o in owed])
        outcomes = []
        for item, result in zip(owed, results, strict=True):
            judged = self._judge(item, result)
            self._count(item, judged)
            outcomes.append(self._outcome(item, judged, attempted, origin))
        await self._store.record(Recording(self.name, outcomes, at=self._now_at()))

    def _count(self, item: Owed, judged: Verdict) -> None:
        stats = self.stats
        if judged.state == "delivered":
            stats.delivered += 1
            return
        stats.errors_by_status[str(judged.status or "network")] += 1
        stats.last_error, stats.last_error_status = judged.error, judged.status
        stats.last_error_message_id = item.view.message_id
        stats.last_error_at = self._now_at()
        if judged.state == "retrying":
            stats.retried += 1
            return
        stats.dead += 1
        log.warning(
            "delivery_dead",
            destination=self.name,
            message_id=item.view.message_id,
            attempts=item.view.attempts + 1,
            status=judged.status,
            error=judged.error,
        )

    def _outcome(
        self, item: Owed, judged: Verdict, attempted: Attempted, origin: str | None = None
    ) -> Outcome:
        now_ms = self._clock.now_ms()
        view = item.view
        retrying = judged.state == "retrying"
        return Outcome(
            seq=view.seq,
            message_id=view.message_id,
            order_key=item.order_key,
            attempt=view.attempts + 1,
            started_at=attempted.started_at,
            duration_ms=attempted.duration_ms,
            status=judged.status,
            error=judged.error,
            state=judged.state,
            first_attempt_at=view.first_attempt_at or attempted.started_at,
            next_attempt_at=format_ms(now_ms + round(judged.delay_s * 1000)),
            finished_at=None if retrying else format_ms(now_ms),
            origin=origin or ("ledger" if item.from_ledger else "stream"),
        )

    def _now_at(self) -> str:
        return format_ms(self._clock.now_ms())

    # -- ordered: hold a partition's batch until every message in it is final ------------------

    async def _hold(
        self, reader: JetStreamLaneReader, batch: list[Owed], stop: asyncio.Event
    ) -> None:
        """Each user's messages go one at a time, in order; a retryable failure waits its
        delay here (the batch kept alive with `in_progress`) while other users' messages go on.
        Nothing is acked before the whole batch is final, so no node can take a later message
        of this partition meanwhile (the consumer's `max_ack_pending` is the batch). Stopping,
        the rest is nak'ed when the reader closes: redelivered first, in order."""
        waiting = list(batch)
        due_ms = {item.view.seq: 0 for item in waiting}
        kept_alive = time.monotonic()
        while waiting and not stop.is_set():
            now = self._clock.now_ms()
            ready = [item for item in _heads(waiting) if due_ms[item.view.seq] <= now]
            if not ready:
                await self._clock.wait(stop, HOLD_TICK_S)
            else:
                results, attempted = await self._attempt([o.view for o in ready])
                outcomes = []
                for item, result in zip(ready, results, strict=True):
                    judged = self._judge(item, result)
                    self._count(item, judged)
                    outcomes.append(self._outcome(item, judged, attempted))
                    waiting.remove(item)
                    if judged.state == "retrying":
                        again = _again(item, outcomes[-1])
                        waiting.insert(_position(waiting, again), again)
                        due_ms[item.view.seq] = now + round(judged.delay_s * 1000)
                await self._store.record(Recording(self.name, outcomes, at=self._now_at()))
            if time.monotonic() - kept_alive > self._ack_wait_s / 3:
                kept_alive = time.monotonic()
                for msg in reader.keep_alive():
                    await msg.in_progress()

    # -- one attempt ------------------------------------------------------------------------

    async def _attempt(self, views: list[MessageView]) -> tuple[list[Result], Attempted]:
        async with self._sending:
            await self._rate.acquire(asyncio.Event())
            self.stats.in_flight += len(views)
            started_at = self._now_at()
            began = time.perf_counter()
            try:
                results = await self._send(views)
            finally:
                self.stats.in_flight -= len(views)
        duration_s = time.perf_counter() - began
        self.stats.attempts += 1
        self.stats.latencies_ms.append(duration_s * 1000)
        if self._observe is not None:
            self._observe(duration_s)
        await self._judge_destination(results)
        return results, Attempted(started_at, duration_s * 1000)

    async def _send(self, views: list[MessageView]) -> list[Result]:
        """Prepare each message for its actions and send them; a failure of cdpd's own is
        retried like a network error."""
        try:
            if self._transform is not None:
                views = [self._transformed(view) for view in views]
            prepared = actions.prepare(self._actions, views)
            ready = [item for item in prepared if item.problem is None]
            sent = iter(await self._sender.send(self._session, ready) if ready else [])
            results = [
                next(sent) if item.problem is None else Result(None, item.problem, invalid=True)
                for item in prepared
            ]
            return actions.combine(views, prepared, results)
        except Exception as exc:
            log.exception("delivery_send_failed", destination=self.name)
            return [Result(None, f"cdpd failed to send it: {type(exc).__name__}: {exc}")] * len(
                views
            )

    def _transformed(self, view: MessageView) -> MessageView:
        assert self._transform is not None
        try:
            payload = self._transform(view.source, view.payload)
        except msgspec.DecodeError:
            return view
        return view if payload is view.payload else msgspec.structs.replace(view, payload=payload)

    def _judge(self, item: Owed, result: Result) -> Verdict:
        received_at = item.received_at
        return verdict(
            result,
            attempt=item.view.attempts + 1,
            received_ms=parse_ms(received_at) if received_at else self._clock.now_ms(),
            now_ms=self._clock.now_ms(),
            retry=self._retry,
            rand=self._rand,
        )

    async def _judge_destination(self, results: Sequence[Result]) -> None:
        """Feed the shared circuit: the request failed as a whole when every result is a
        retryable failure; publish it when its state changes."""
        circuit = self.shared.circuit
        distinct = list({id(r): r for r in results}.values())
        failed = [
            r
            for r in distinct
            if not r.invalid and not r.skipped and r.parked_until_ms is None and _retryable(r)
        ]
        was, paused = circuit.state, circuit.paused_until_ms
        if distinct and len(failed) == len(distinct):
            circuit.failed(self._clock.now_ms(), failed[0].retry_after_s, failed[0].status)
            if circuit.state == "open" and was == "closed":
                log.warning("delivery_circuit_open", destination=self.name)
        elif circuit.succeeded():
            log.info("delivery_circuit_closed", destination=self.name)
        self.stats.circuit = circuit.state
        if circuit.state != was or circuit.paused_until_ms != paused:
            try:
                await self.shared.publish()
            except Exception as exc:
                log.warning("delivery_circuit_unwritable", destination=self.name, error=repr(exc))


def _again(item: Owed, outcome: Outcome) -> Owed:
    """The message as its next attempt sees it: one attempt more, in the ledger now."""
    view = msgspec.structs.replace(
        item.view, attempts=outcome.attempt, first_attempt_at=outcome.first_attempt_at
    )
    return msgspec.structs.replace(item, view=view, from_ledger=True)


def _position(waiting: list[Owed], item: Owed) -> int:
    """Where `item` goes back in seq order."""
    return sum(1 for other in waiting if other.view.seq < item.view.seq)


def _heads(waiting: list[Owed]) -> list[Owed]:
    """The oldest waiting message of each user (and every message without a user)."""
    seen: set[str] = set()
    heads = []
    for item in waiting:
        if item.order_key is None:
            heads.append(item)
        elif item.order_key not in seen:
            seen.add(item.order_key)
            heads.append(item)
    return heads


def _retryable(result: Result) -> bool:
    return not policy.is_success(result.status) and policy.is_retryable(result.status)
