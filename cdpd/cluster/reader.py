"""A lane's reader on the JetStream backend (`LaneReader`): it fetches from the destination's
durable consumer (or a replay job's), routes each message on arrival and hands out the rest,
which the node then holds until `JetStreamDeliveryStore.record` settles them
(cdpd/cluster/store.py)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from cdpd.cluster import dead
from cdpd.cluster.layout import DESTINATION, OWED_TO, row_of
from cdpd.cluster.ledger import LedgerRow
from cdpd.cluster.routing import Router
from cdpd.delivery.store import (
    DEAD,
    DELIVERED,
    PENDING,
    UNFINISHED,
    Owed,
    ReplayJob,
    RoutingRule,
    lane_consumer,
    replay_consumer,
)
from cdpd.model.rows import MessageView, OutboxRow
from cdpd.outbox.consumers import Position

if TYPE_CHECKING:
    from cdpd.cluster.store import JetStreamDeliveryStore


class Held(msgspec.Struct, gc=False):
    """A message this node took from a consumer and has not settled yet."""

    msg: Msg
    consumer: str  # lane_consumer(...) or replay_consumer(...)
    holding: bool  # an ordered lane retries it in place: keep it, do not nak it
    reader: int = 0  # id() of the reader that took it: what a closing reader hands back


async def replayable(
    row: OutboxRow, job: ReplayJob, router: Router, store: JetStreamDeliveryStore, seq: int
) -> bool:
    """In the job's window, from its source, owed, and not waiting in the ledger (those the
    lane retries itself)."""
    if not (job.since_at <= row.received_at < job.until_at):
        return False
    if job.source is not None and row.source != job.source:
        return False
    if not router.owed(row):
        return False
    kept = await (await store.ledger()).get(job.destination, seq)
    return kept is None or kept.state not in UNFINISHED


class JetStreamLaneReader:
    """Reads a destination's consumer(s); routes each message on arrival (what it is not owed
    is acked at once) and sorts the rest into first deliveries and messages handed back."""

    def __init__(
        self,
        store: JetStreamDeliveryStore,
        rule: RoutingRule,
        router: Router,
        consumers: list[tuple[str, str]],
        holding: bool,
    ) -> None:
        self._store = store
        self._rule = rule
        self._router = router
        self._consumers = consumers
        self._holding = holding
        self._subs: dict[str, JetStreamContext.PullSubscription] = {}
        self._new: list[Owed] = []
        self._due: list[Owed] = []
        self._job_subs: dict[int, JetStreamContext.PullSubscription] = {}

    async def new_messages(self, after_seq: int, up_to_seq: int, limit: int) -> list[Owed]:
        """The next messages the consumer hands out for the first time (the consumer keeps the
        position: `after_seq` and `up_to_seq` bound what is returned, nothing more)."""
        if not self._new:
            await self._fetch(limit)
        for owed in [o for o in self._new if o.view.seq <= after_seq]:
            await self._store.settled(self._rule.destination, owed.view.seq)
        waiting = [o for o in self._new if o.view.seq > after_seq]
        taken = [o for o in waiting if o.view.seq <= up_to_seq][:limit]
        self._new = [o for o in waiting if o not in taken]
        return taken

    async def due(self, now_at: str, limit: int) -> list[Owed]:
        """Messages JetStream handed back (a retry's delay passed, or a node holding them
        died) in the last read, with their ledger rows; on an ordered rule only the oldest
        unfinished message of each user goes out, the others go back for a while."""
        if not self._due:
            return []
        waiting = await self.unfinished_keys() if self._rule.ordered else Counter[str]()
        ready = []
        for owed in self._due:
            if owed.order_key and waiting[owed.order_key] and not await self._oldest(owed):
                await self._hand_back(owed, delay_s=1.0)
            else:
                ready.append(owed)
        self._due = ready[limit:]
        return ready[:limit]

    async def _oldest(self, owed: Owed) -> bool:
        rows = await (await self._store.ledger()).rows(self._rule.destination)
        earlier = [
            r.seq
            for r in rows
            if r.order_key == owed.order_key and r.state in UNFINISHED and r.seq < owed.view.seq
        ]
        return not earlier

    async def _hand_back(self, owed: Owed, delay_s: float) -> None:
        held = self._store._held.pop((self._rule.destination, owed.view.seq), None)
        if held is not None:
            await held.msg.nak(delay=delay_s)

    async def next_due_at(self) -> str | None:
        rows = await (await self._store.ledger()).rows(self._rule.destination)
        due = [r.next_attempt_at for r in rows if r.state in UNFINISHED and r.next_attempt_at]
        return min(due, default=None)

    async def unfinished_keys(self) -> Counter[str]:
        rows = await (await self._store.ledger()).rows(self._rule.destination)
        return Counter(r.order_key for r in rows if r.state in UNFINISHED and r.order_key)

    async def replay_jobs(self) -> list[ReplayJob]:
        return await (await self._store.ledger()).jobs(self._rule.destination)

    async def replay_messages(self, job: ReplayJob, after_seq: int, limit: int) -> list[Owed]:
        """The job's next messages from its own consumer; what it does not send is acked."""
        sub = self._job_subs.get(job.id)
        layout = self._store.layout
        if sub is None:
            durable = layout.replay_consumer(job.destination, job.id)
            sub = await self._store._js.pull_subscribe_bind(durable, layout.stream)
            self._job_subs[job.id] = sub
        try:
            batch = await sub.fetch(limit, timeout=self._store.fetch_wait_s)
        except TimeoutError:
            return []
        found = []
        for msg in batch:
            owed = await self._replayed(job, msg, after_seq)
            if owed is None:
                await msg.ack()  # past the job (the lane's own consumer sends it), or not sent
                continue
            self._store.hold(
                job.destination,
                owed.view.seq,
                Held(msg, replay_consumer(job.id), False, id(self)),
            )
            found.append(owed)
        return found

    async def _replayed(self, job: ReplayJob, msg: Msg, after_seq: int) -> Owed | None:
        """What the job sends of `msg`: eligible the first time, and handed back after a
        failed attempt of the job's (its ledger row then waits for this consumer)."""
        seq = msg.metadata.sequence.stream
        if seq > job.last_seq or seq <= after_seq or DESTINATION in (msg.headers or {}):
            return None
        row = row_of(msg.headers, msg.data)
        if msg.metadata.num_delivered > 1:
            kept = await (await self._store.ledger()).get(job.destination, seq)
            if kept is not None and kept.state in UNFINISHED:
                return self._owed(row, seq, kept)
        if not await replayable(row, job, self._router, self._store, seq):
            return None
        return self._owed(row, seq, None)

    async def positions(self) -> dict[str, Position]:
        return await self._store.positions()

    async def close(self) -> None:
        """Hand back at once what this reader took and nobody settled (in order)."""
        for held in self._store.release(id(self)):
            await held.msg.nak()
        for sub in [*self._subs.values(), *self._job_subs.values()]:
            await sub.unsubscribe()
        self._subs.clear()
        self._job_subs.clear()

    def keep_alive(self) -> list[Msg]:
        """What this reader holds, for an ordered lane to mark in progress while it retries."""
        return [held.msg for held in self._store._held.values() if held.reader == id(self)]

    # -- fetching ---------------------------------------------------------------------------

    async def _fetch(self, limit: int) -> None:
        wait_s = self._store.fetch_wait_s / len(self._consumers)
        for durable, subject in self._consumers:
            sub = self._subs.get(durable)
            if sub is None:
                sub = await self._store._js.pull_subscribe(
                    subject, durable=durable, stream=self._store.layout.stream
                )
                self._subs[durable] = sub
            try:
                batch = await sub.fetch(limit, timeout=wait_s)
            except TimeoutError:
                continue
            for msg in batch:
                await self._take(msg)

    async def _take(self, msg: Msg) -> None:
        headers = msg.headers or {}
        row = row_of(headers, msg.data)
        destination = self._rule.destination
        target = headers.get(DESTINATION)
        refused = self._router.refusal(headers, row)
        if msg.metadata.num_delivered == 1 and target is None and OWED_TO not in headers:
            self._store.routed(destination, row.received_at, refused)  # counted once
        if refused is not None:
            await msg.ack()  # not for this destination (a replay for another, or filtered)
            return
        # A replayed dead letter keeps its ledger row under the sequence it was accepted with.
        seq = int(headers.get(dead.SEQ, msg.metadata.sequence.stream))
        kept = None
        if msg.metadata.num_delivered > 1 or target is not None:
            kept = await (await self._store.ledger()).get(destination, seq)
        if kept is not None and target is not None:
            kept.state = PENDING  # a replayed copy is owed again, whatever its row said
        if kept is not None and kept.state == DEAD:
            await self._store._bury(msg, kept)  # given up while JetStream held it
            return
        if kept is not None and kept.state == DELIVERED and target is None:
            await msg.ack()  # delivered by a node that died before its ack
            return
        held = Held(msg, lane_consumer(destination), self._holding, id(self))
        self._store.hold(destination, seq, held)
        owed = self._owed(row, seq, kept)
        (self._due if owed.from_ledger else self._new).append(owed)

    def _owed(self, row: OutboxRow, seq: int, kept: LedgerRow | None) -> Owed:
        key = (row.user_id or row.anonymous_id) if self._rule.ordered else None
        if kept is None:
            view = MessageView(seq, row.message_id, row.payload, source=row.source)
            return Owed(view, key, received_at=row.received_at)
        view = MessageView(
            seq, row.message_id, row.payload, kept.attempts, kept.first_attempt_at, row.source
        )
        unfinished = kept.state in UNFINISHED
        return Owed(view, key, unfinished, row.received_at, has_row=True)
