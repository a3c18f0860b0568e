"""One destination's lane on the JetStream backend: it takes batches from the destination's
durable consumer, shared by every node, and settles each message only after the destination's
verdict: delivered (or filtered out) is acked, a retryable failure is nak'ed with the retry
policy's delay (`delivery/policy.py`; the attempt number is JetStream's delivery count), and a
message given up is published to the dead-letter stream and terminated. A node that dies
leaves its unacked messages to be redelivered to another node after `ack_wait`.

`ordering = "user"` uses one consumer per partition subject (a user's messages all share one)
with `max_ack_pending = 1`: one message of a partition is out at a time, cluster-wide, and a
failed one is retried in place by the node holding it (`_hold`), so nothing later of that
partition overtakes it on any node. The price is per-partition throughput (one request per
message per partition at a time; raise `partitions` for more parallelism). A larger
`max_ack_pending` would not do: two nodes' pull requests can split a partition's next messages
between them, and their requests then race."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence

import aiohttp
import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cdpd.clock import Clock
from cdpd.cluster import dead
from cdpd.cluster.layout import Layout, row_of
from cdpd.cluster.routing import Router
from cdpd.cluster.settle import Verdict, consumer_specs, verdict
from cdpd.cluster.shared import GlobalRateLimit, SharedCircuit
from cdpd.delivery import policy
from cdpd.delivery.stats import LaneStats
from cdpd.destinations import actions
from cdpd.destinations.actions import Action
from cdpd.destinations.base import Destination as Sender
from cdpd.destinations.base import Result
from cdpd.destinations.settings import Destination, RetryConfig
from cdpd.model.rows import MessageView
from cdpd.model.timestamps import format_ms, parse_ms

log = structlog.get_logger()

FETCH_WAIT_S = 1.0
HOLD_TICK_S = 0.5


class Owed(msgspec.Struct, gc=False):
    """A fetched message the destination is owed."""

    msg: Msg
    view: MessageView
    order_key: str | None
    received_ms: int
    attempts: int  # made before this one


def lane_ack_wait_s(config: Destination, ack_wait_s: float) -> float:
    """At least twice the destination's timeout: an attempt in flight is not handed out again."""
    return max(ack_wait_s, 2 * config.timeout_s)


async def ensure_consumers(
    js: JetStreamContext, layout: Layout, config: Destination, ack_wait_s: float
) -> None:
    """Create a destination's durable consumers; a destination seen for the first time starts
    with the messages accepted from now on (as on the SQLite backend)."""
    for durable, subject, pending in consumer_specs(layout, config):
        consumer = ConsumerConfig(
            durable_name=durable,
            description=f"cdpd delivery to {config.name}",
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_deliver=-1,
            max_ack_pending=pending,
            filter_subject=subject,
            max_waiting=4096,
        )
        await js.add_consumer(layout.stream, consumer)


class JetStreamLane:
    def __init__(
        self,
        config: Destination,
        sender: Sender,
        *,
        actions: list[Action],
        router: Router,
        js: JetStreamContext,
        layout: Layout,
        circuit: SharedCircuit,
        rate: GlobalRateLimit,
        session: aiohttp.ClientSession,
        clock: Clock,
        retry: RetryConfig,
        ack_wait_s: float,
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
        self._router = router
        self._js = js
        self._layout = layout
        self._rate = rate
        self._session = session
        self._clock = clock
        self._retry = retry
        self._ack_wait_s = lane_ack_wait_s(config, ack_wait_s)
        self._transform = transform
        self._observe = observe
        self._rand = rand
        self._ordered = config.ordering == "user"
        self._sending = asyncio.Semaphore(config.concurrency)

    # -- consumers --------------------------------------------------------------------------

    def consumers(self) -> list[tuple[str, str, int]]:
        return consumer_specs(self._layout, self._config)

    async def ensure_consumers(self) -> None:
        await ensure_consumers(self._js, self._layout, self._config, self._ack_wait_s)

    # -- running ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.ensure_consumers()
        async with asyncio.TaskGroup() as tasks:
            for durable, subject, _ in self.consumers():
                tasks.create_task(self._consume(durable, subject, stop), name=f"jsd-{durable}")

    async def _consume(self, durable: str, subject: str, stop: asyncio.Event) -> None:
        sub = await self._js.pull_subscribe(subject, durable=durable, stream=self._layout.stream)
        try:
            if self._ordered:
                await self._fetch_loop(sub, stop, lambda batch: self._hold(batch, stop))
            else:
                async with asyncio.TaskGroup() as workers:
                    queue: asyncio.Queue[list[Msg]] = asyncio.Queue(self._config.concurrency)
                    for _ in range(self._config.concurrency):
                        workers.create_task(self._work(queue, stop))
                    await self._fetch_loop(sub, stop, queue.put)
                    for _ in range(self._config.concurrency):
                        await queue.put([])  # each worker stops after what it holds
        finally:
            await sub.unsubscribe()

    async def _fetch_loop(
        self,
        sub: JetStreamContext.PullSubscription,
        stop: asyncio.Event,
        handle: Callable[[list[Msg]], object],
    ) -> None:
        while not stop.is_set():
            size, probe = await self._may_take(stop)
            if size == 0:
                continue
            try:
                batch = await sub.fetch(size, timeout=FETCH_WAIT_S)
            except TimeoutError:
                if probe:  # nothing to probe with: the next message may probe
                    await self._give_back_probe()
                continue
            await handle(batch)  # type: ignore[misc]

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

    async def _work(self, queue: asyncio.Queue[list[Msg]], stop: asyncio.Event) -> None:
        while True:
            batch = await queue.get()
            if not batch:
                return
            await self._deliver(batch)

    # -- unordered: settle each message on its verdict ---------------------------------------

    async def _deliver(self, batch: list[Msg]) -> None:
        owed = await self._owed(batch)
        if not owed:
            return
        results = await self._attempt([o.view for o in owed])
        for item, result in zip(owed, results, strict=True):
            verdict = self._judge(item, result)
            await self._settle(item, verdict)

    async def _owed(self, batch: Sequence[Msg]) -> list[Owed]:
        """The messages of `batch` owed to the destination; the others are acked at once."""
        owed = []
        for msg in batch:
            headers = msg.headers or {}
            row = row_of(headers, msg.data)
            if not self._router.takes(headers, row):
                await msg.ack()
                continue
            attempts = msg.metadata.num_delivered - 1
            view = MessageView(
                msg.metadata.sequence.stream,
                row.message_id,
                row.payload,
                attempts,
                row.received_at if attempts else None,
                row.source,
            )
            received_ms = parse_ms(row.received_at) if row.received_at else self._clock.now_ms()
            owed.append(Owed(msg, view, row.user_id or row.anonymous_id, received_ms, attempts))
        return owed

    async def _settle(self, item: Owed, verdict: Verdict) -> None:
        stats = self.stats
        if verdict.state == "delivered":
            await item.msg.ack()
            stats.delivered += 1
            return
        stats.errors_by_status[str(verdict.status or "network")] += 1
        stats.last_error, stats.last_error_status = verdict.error, verdict.status
        stats.last_error_message_id = item.view.message_id
        stats.last_error_at = format_ms(self._clock.now_ms())
        if verdict.state == "retrying":
            await item.msg.nak(delay=verdict.delay_s)
            stats.retried += 1
            return
        await self._bury(item, verdict)

    async def _bury(self, item: Owed, verdict: Verdict) -> None:
        death = dead.Death(
            self.name,
            item.view.seq,
            item.msg.subject,
            item.attempts + 1,
            verdict.status,
            verdict.error,
            format_ms(self._clock.now_ms()),
        )
        headers = dead.dead_headers(item.msg.headers, death)
        await dead.bury(self._js, self._layout, item.msg.data, headers)
        await item.msg.term()
        self.stats.dead += 1
        log.warning(
            "delivery_dead",
            destination=self.name,
            message_id=item.view.message_id,
            attempts=death.attempts,
            status=verdict.status,
            error=verdict.error,
        )

    # -- ordered: hold a partition's batch until every message in it is final ------------------

    async def _hold(self, batch: list[Msg], stop: asyncio.Event) -> None:
        """Each user's messages go one at a time, in order; a retryable failure waits its
        delay here (the batch kept alive with `in_progress`) while other users' messages go on.
        Nothing is acked before the whole batch is final, so no node can take a later message
        of this partition meanwhile (the consumer's `max_ack_pending` is the batch). Stopping,
        the final ones are acked and the rest nak'ed: redelivered first, in order."""
        waiting = await self._owed(batch)
        due_ms = {id(item): 0 for item in waiting}
        kept_alive = time.monotonic()
        while waiting and not stop.is_set():
            now = self._clock.now_ms()
            heads = _heads(waiting)
            ready = [item for item in heads if due_ms[id(item)] <= now]
            if not ready:
                await self._clock.wait(stop, HOLD_TICK_S)
            else:
                results = await self._attempt([o.view for o in ready])
                for item, result in zip(ready, results, strict=True):
                    verdict = self._judge(item, result)
                    if verdict.state == "retrying":
                        item.attempts += 1
                        first_at = item.view.first_attempt_at or format_ms(now)
                        item.view = msgspec.structs.replace(
                            item.view, attempts=item.attempts, first_attempt_at=first_at
                        )
                        due_ms[id(item)] = now + round(verdict.delay_s * 1000)
                        self.stats.retried += 1
                        continue
                    waiting.remove(item)
                    if verdict.state == "dead":
                        await self._bury(item, verdict)
                    else:
                        self.stats.delivered += 1
            if time.monotonic() - kept_alive > self._ack_wait_s / 3:
                kept_alive = time.monotonic()
                for msg in batch:
                    await msg.in_progress()
        unfinished = {id(item.msg) for item in waiting}
        for msg in batch:
            await (msg.nak() if id(msg) in unfinished else msg.ack())

    # -- one attempt ------------------------------------------------------------------------

    async def _attempt(self, views: list[MessageView]) -> list[Result]:
        async with self._sending:
            await self._rate.acquire(asyncio.Event())
            self.stats.in_flight += len(views)
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
        return results

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
        return verdict(
            result,
            attempt=item.attempts + 1,
            received_ms=item.received_ms,
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
