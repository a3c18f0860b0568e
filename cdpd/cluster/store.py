"""`DeliveryStore` on JetStream: what the cluster's lanes read and record through, and what
`cdpd deliveries`, `cdpd replay` and the admin API ask on this backend.

- A destination's lane reads its durable consumer(s), shared by every node (the consumer is the
  position: its ack floor passes every message settled); `new_messages` hands out first
  deliveries, `due` the messages JetStream handed back after a retry's delay.
- `record` settles each message held by this node on its outcome: delivered is acked, a
  retryable failure nak'ed with its delay (or, for an ordered lane that retries in place, kept
  alive), a message given up goes to `CDPD_DEAD` and is terminated. What is not a first-attempt
  success also gets its row in the ledger (`CDPD_ledger`, cdpd/cluster/ledger.py).
- A replay job reads a durable consumer of its own from the first message of its window.

Names are public (docs/cluster-delivery.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError, NotFoundError

from cdpd.clock import Clock
from cdpd.cluster import dead
from cdpd.cluster.layout import Layout, dedup_id, row_of
from cdpd.cluster.ledger import Ledger, LedgerRow, job_key
from cdpd.cluster.reader import Held, JetStreamLaneReader, replayable
from cdpd.cluster.routing import Router
from cdpd.cluster.settle import consumer_specs
from cdpd.delivery.store import (
    DEAD,
    DELIVERED,
    PENDING,
    RETRYING,
    STATES,
    UNFINISHED,
    AttemptRow,
    DeadDelivery,
    DeliveryStatus,
    Outcome,
    Recording,
    ReplayJob,
    RoutingRule,
    lane_consumer,
    replay_consumer,
)
from cdpd.destinations import registry
from cdpd.destinations.actions import Action
from cdpd.destinations.settings import Destination
from cdpd.model.rows import OutboxRow
from cdpd.model.timestamps import format_ms, parse_ms
from cdpd.outbox.consumers import Position

FETCH_WAIT_S = 1.0
BISECT_MARGIN_MS = 3_600_000  # received_at is not quite monotonic in the stream (as on SQLite)


class JetStreamDeliveryStore:
    """The delivery store of one node (or of one CLI command) on the JetStream cluster."""

    def __init__(
        self,
        js: JetStreamContext,
        layout: Layout,
        destinations: Sequence[Destination],
        actions: Mapping[str, Sequence[Action]] | None = None,
        *,
        clock: Clock,
        ack_wait_s: float,
        sources: Sequence[str] = (),
        fetch_wait_s: float = FETCH_WAIT_S,
    ) -> None:
        self._js = js
        self.layout = layout
        self._destinations = {d.name: d for d in destinations}
        self._actions = dict(actions) if actions is not None else {}
        self._clock = clock
        self.ack_wait_s = ack_wait_s
        self._sources = sources  # with dedup by source, a messageId is looked up under each
        self.fetch_wait_s = fetch_wait_s
        self._ledger: Ledger | None = None
        self._held: dict[tuple[str, int], Held] = {}
        # What `start` is told; until then (a CLI command), what the config says.
        self._enabled = [d.name for d in destinations if d.enabled]
        self._disabled = [d.name for d in destinations if not d.enabled]
        # Told of each message a lane's consumer hands out the first time: (destination,
        # received_at, why it is filtered out or None); a node's counts per interval.
        self.routed: Callable[[str, str, str | None], None] = _not_counted

    async def ledger(self) -> Ledger:
        if self._ledger is None:
            bucket = self.layout.ledger_bucket
            self._ledger = Ledger(self._js, bucket, await self._js.key_value(bucket))
        return self._ledger

    def _now(self) -> str:
        return format_ms(self._clock.now_ms())

    # -- start-up ---------------------------------------------------------------------------

    async def start(
        self, enabled: Sequence[str], disabled: Sequence[str], end_seq: int, at: str
    ) -> dict[str, Position]:
        """Create the consumers of enabled destinations that have none (starting after the
        stream's last message; `end_seq` is the SQLite outbox's and is not used), and give up
        the unfinished ledger rows and replay jobs of destinations disabled or removed."""
        self._enabled, self._disabled = list(enabled), list(disabled)
        for name in enabled:
            await self.ensure_consumers(self._destinations[name])
        ledger = await self.ledger()
        gone = set(disabled)
        for row, revision in await ledger.listed():
            if row.destination in gone or not self._configured(row):
                why = "the destination is disabled" if row.destination in gone else None
                give_up = _giving_up(why or "the destination is no longer configured", at)
                await ledger.change(row, revision, give_up)
        for job in await ledger.jobs():
            if job.destination not in enabled:
                await self._end_job(job)
        return await self.positions()

    def _configured(self, row: LedgerRow) -> bool:
        return row.destination in self._enabled or row.destination in self._disabled

    async def ensure_consumers(self, destination: Destination) -> None:
        """A destination's consumers, created once: the first starts after the stream's last
        message, so a new destination gets the messages accepted from then on."""
        ack_wait_s = max(self.ack_wait_s, 2 * destination.timeout_s)
        for durable, subject, pending in consumer_specs(self.layout, destination):
            config = ConsumerConfig(
                durable_name=durable,
                description=f"cdpd delivery to {destination.name}",
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ack_wait_s,
                max_deliver=-1,
                max_ack_pending=pending,
                filter_subject=subject,
                max_waiting=4096,
            )
            await self._create_once(config)

    async def _create_once(self, config: ConsumerConfig, after_seq: int | None = None) -> None:
        try:
            await self._js.consumer_info(self.layout.stream, config.durable_name or "")
            return
        except NotFoundError:
            pass
        if after_seq is None:
            after_seq = (await self._js.stream_info(self.layout.stream)).state.last_seq
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = after_seq + 1
        try:
            await self._js.add_consumer(self.layout.stream, config)
        except BadRequestError:  # another node created it meanwhile
            await self._js.consumer_info(self.layout.stream, config.durable_name or "")

    async def positions(self) -> dict[str, Position]:
        """The lanes' positions: how far each destination's consumers have settled every
        message (their ack floor), and each replay job's."""
        at = self._now()
        found: dict[str, Position] = {}
        for name in [*self._enabled, *self._disabled]:
            durables = [durable for durable, _, _ in self._specs(name)]
            seq = min([await self._floor(durable) for durable in durables], default=0)
            found[lane_consumer(name)] = Position(
                lane_consumer(name), "delivery", seq, [], name in self._disabled, at
            )
        for job in await (await self.ledger()).jobs():
            durable = self.layout.replay_consumer(job.destination, job.id)
            found[replay_consumer(job.id)] = Position(
                replay_consumer(job.id), "replay", await self._floor(durable), [], False, at
            )
        return found

    def _specs(self, name: str) -> list[tuple[str, str, int]]:
        destination = self._destinations.get(name)
        if destination is None:
            return [(self.layout.delivery_consumer(name), self.layout.messages_subjects, 0)]
        return consumer_specs(self.layout, destination)

    async def _floor(self, durable: str) -> int:
        """Every message up to this sequence is settled (or was before the consumer began)."""
        try:
            info = await self._js.consumer_info(self.layout.stream, durable)
        except NotFoundError:
            return 0
        began = (info.config.opt_start_seq or 1) - 1
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        return max(floor, began)

    # -- reading ----------------------------------------------------------------------------

    async def reader(
        self, rule: RoutingRule, partition: int | None = None, *, holding: bool = False
    ) -> JetStreamLaneReader:
        """A lane's reader: of every consumer of the destination, or (an ordered lane) of one
        partition's consumer."""
        specs = self._specs(rule.destination)
        if partition is not None:
            specs = [specs[partition]]
        return JetStreamLaneReader(
            self, rule, self.router(rule), [(d, s) for d, s, _ in specs], holding
        )

    def router(self, rule: RoutingRule) -> Router:
        actions = self._actions.get(rule.destination)
        if actions is None:
            destination = self._destinations.get(rule.destination)
            actions = registry.actions_of(destination) if destination is not None else []
            self._actions[rule.destination] = actions
        return Router(rule, actions)

    def hold(self, destination: str, seq: int, held: Held) -> None:
        self._held[(destination, seq)] = held

    async def settled(self, destination: str, seq: int) -> None:
        held = self._held.pop((destination, seq), None)
        if held is not None:
            await held.msg.ack()

    def release(self, reader: int) -> list[Held]:
        """Forget the messages a closing reader held, for it to hand them back."""
        keys = [key for key, held in self._held.items() if held.reader == reader]
        return [self._held.pop(key) for key in keys]

    # -- recording --------------------------------------------------------------------------

    async def record(self, recording: Recording) -> None:
        destination, at = recording.destination, recording.at or self._now()
        for outcome in recording.outcomes:
            await self._settle(destination, outcome, at)
        for parked in recording.parked:
            await self._park(destination, parked.seq, parked.message_id, parked.order_key, at)
        for name, (seq, done) in recording.progress.items():
            await self._passed(destination, name, seq, done)
        for job_id in recording.finished_jobs:
            for job in await (await self.ledger()).jobs(destination):
                if job.id == job_id:
                    await self._end_job(job)

    async def _settle(self, destination: str, o: Outcome, at: str) -> None:
        held = self._held.pop((destination, o.seq), None)
        ledger = await self.ledger()
        row = None
        if not (o.state == DELIVERED and o.origin == "stream"):
            row = await ledger.get(destination, o.seq)
            if row is not None or o.origin != "replay" or o.state != DELIVERED:
                row = _updated(row, destination, o, at)
                await ledger.put(row)
        if held is None:
            return  # settled elsewhere: a message given up meanwhile, or another node's
        if o.state == DELIVERED:
            await held.msg.ack()
        elif o.state == RETRYING and held.holding:
            await held.msg.in_progress()
            self._held[(destination, o.seq)] = held
        elif o.state == RETRYING:
            await held.msg.nak(delay=max(0.0, (parse_ms(o.next_attempt_at) - parse_ms(at)) / 1000))
        else:
            await self._bury(held.msg, row or _updated(None, destination, o, at))

    async def _bury(self, msg: Msg, row: LedgerRow) -> None:
        death = dead.Death(
            row.destination,
            row.seq,
            msg.subject,
            row.attempts,
            row.last_status,
            row.last_error,
            row.finished_at or self._now(),
        )
        await dead.bury(self._js, self.layout, msg.data, dead.dead_headers(msg.headers, death))
        await msg.term()

    async def _park(
        self, destination: str, seq: int, message_id: str, order_key: str, at: str
    ) -> None:
        """Held back behind an earlier message of its user: a pending row, and JetStream
        hands the message back at once (`due` then holds it until its user's turn)."""
        ledger = await self.ledger()
        if await ledger.get(destination, seq) is None:
            await ledger.put(
                LedgerRow(
                    destination=destination,
                    seq=seq,
                    message_id=message_id,
                    order_key=order_key,
                    state=PENDING,
                    created_at=at,
                    next_attempt_at=at,
                )
            )
        held = self._held.pop((destination, seq), None)
        if held is not None:
            await held.msg.nak()

    async def _passed(
        self, destination: str, consumer: str, seq: int, done: list[tuple[int, int]]
    ) -> None:
        """A position moved: ack what this node holds of that consumer up to it."""
        for (name, held_seq), held in list(self._held.items()):
            finished = held_seq <= seq or any(a <= held_seq <= b for a, b in done)
            if name == destination and held.consumer == consumer and finished:
                del self._held[(name, held_seq)]
                await held.msg.ack()

    async def expire(self, destination: str, rule: RoutingRule, before_at: str, at: str) -> int:
        """Give up the ledger rows first tried before `before_at`: the destination has been
        unreachable for their whole retry window. (Dead in the ledger; the message itself is
        buried when JetStream hands it back.)"""

        def expired(row: LedgerRow) -> bool:
            if (row.first_attempt_at or row.created_at) >= before_at:
                return False
            why = f"{row.last_error or 'unsent'} (the destination stayed unreachable for the"
            return _giving_up(why + " whole retry window)", at)(row)

        ledger = await self.ledger()
        count = 0
        for row, revision in await ledger.listed(destination):
            count += await ledger.change(row, revision, expired)
        return count

    async def retry_now(self, destination: str, at: str) -> int:
        """Every waiting row of the destination says due now. JetStream still hands a message
        back at the delay it was given; what a closed circuit changes is that lanes send."""

        def due_now(row: LedgerRow) -> bool:
            if row.state not in UNFINISHED:
                return False
            row.next_attempt_at = min(row.next_attempt_at or at, at)
            return True

        ledger = await self.ledger()
        count = 0
        for row, revision in await ledger.listed(destination):
            count += await ledger.change(row, revision, due_now)
        return count

    # -- replay -----------------------------------------------------------------------------

    async def replay_dead(self, destination: str, at: str) -> int:
        """Republish the destination's dead letters for it alone (cdpd/cluster/dead.py); their
        ledger rows become pending again, attempt numbers carrying on."""

        def owed_again(row: LedgerRow) -> bool:
            if row.state != DEAD:
                return False
            row.state, row.next_attempt_at = PENDING, at
            row.first_attempt_at = row.finished_at = None
            return True

        ledger = await self.ledger()
        for row, revision in await ledger.listed(destination):
            await ledger.change(row, revision, owed_again)
        return await dead.replay(self._js, self.layout, destination, 10**6)

    async def replay_range(
        self, rule: RoutingRule, since_at: str, until_at: str, source: str | None, at: str
    ) -> tuple[int, int]:
        """A replay job for the eligible messages received in [since_at, until_at) that the
        destination's consumers have settled already (they send the rest themselves): a
        durable consumer of its own, `replay_<destination>_<id>`, from the window's first
        message. Returns the job's id and how many messages it will send."""
        first, last = await self._seq_bounds(since_at, until_at)
        lane = (await self.positions()).get(lane_consumer(rule.destination))
        last = min(last, lane.seq if lane is not None else 0)
        job_id = await self._new_job_id(rule.destination)
        job = ReplayJob(job_id, rule.destination, first, last, since_at, until_at, source)
        config = ConsumerConfig(
            durable_name=self.layout.replay_consumer(rule.destination, job_id),
            description=f"cdpd replay {job_id} to {rule.destination}",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=-1,
            filter_subject=self.layout.messages_subjects,
        )
        await self._create_once(config, after_seq=first - 1)
        await (await self.ledger()).put_job(job)
        router = self.router(rule)
        count = 0
        for seq in range(first, last + 1):
            row = await self._message(seq)
            if row is not None and await replayable(row, job, router, self, seq):
                count += 1
        return job_id, count

    async def _new_job_id(self, destination: str) -> int:
        kv = (await self.ledger())._kv
        job_id = self._clock.now_ms()
        while True:
            try:
                await kv.create(job_key(destination, job_id), b"")
                return job_id
            except KeyWrongLastSequenceError:
                job_id += 1

    async def _end_job(self, job: ReplayJob) -> None:
        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(
                self.layout.stream, self.layout.replay_consumer(job.destination, job.id)
            )
        await (await self.ledger()).end_job(job)

    async def _message(self, seq: int) -> OutboxRow | None:
        try:
            raw = await self._js.get_msg(self.layout.stream, seq)
        except NotFoundError:
            return None
        return row_of(dict(raw.headers or {}), raw.data or b"")

    async def _seq_bounds(self, since_at: str, until_at: str) -> tuple[int, int]:
        """A sequence range that holds every message received in [since_at, until_at),
        found by bisection on received_at, widened by an hour (callers filter exactly)."""
        state = (await self._js.stream_info(self.layout.stream)).state
        if state.messages == 0:
            return (1, 0)
        low, high = state.first_seq, state.last_seq + 1
        since_ms, until_ms = parse_ms(since_at), parse_ms(until_at)
        start = await self._first_at_or_after(low, high, since_ms - BISECT_MARGIN_MS)
        end = await self._first_at_or_after(low, high, until_ms + BISECT_MARGIN_MS)
        return (start, end - 1)

    async def _first_at_or_after(self, low: int, high: int, at_ms: int) -> int:
        while low < high:
            middle = (low + high) // 2
            row = await self._message(middle)
            if row is not None and row.received_at and parse_ms(row.received_at) < at_ms:
                low = middle + 1
            else:
                high = middle
        return high

    # -- what people ask --------------------------------------------------------------------

    async def counts(self) -> dict[str, dict[str, int]]:
        """Ledger rows by destination and state (dead ones as the ledger keeps them)."""
        found: dict[str, dict[str, int]] = {}
        for row in await (await self.ledger()).rows():
            found.setdefault(row.destination, dict.fromkeys(STATES, 0))[row.state] += 1
        return found

    async def dead(self, destination: str | None, limit: int) -> list[DeadDelivery]:
        """The dead letters in `CDPD_DEAD`, most recent first."""
        letters = await dead.dead_letters(self._js, self.layout, destination, 10**6)
        newest = sorted(letters, key=lambda letter: letter[0], reverse=True)
        return [d for _, d, _, _ in newest[:limit]]

    async def show(self, message_id: str, rules: Sequence[RoutingRule]) -> list[DeliveryStatus]:
        """Where the message stands with each destination: its ledger row, else delivered if
        the destination's consumer settled past it, else not reached (or not owed)."""
        ledger = {(r.destination, r.seq): r for r in await (await self.ledger()).rows()}
        seqs = sorted(
            {seq for (_, seq), r in ledger.items() if r.message_id == message_id}
            | set(await self.seqs_of(message_id))
        )
        found = []
        for seq in seqs:
            row = await self._message(seq)
            for rule in rules:
                kept = ledger.get((rule.destination, seq))
                if kept is not None:
                    found.append(kept.status(UNFINISHED))
                elif row is None or row.message_id != message_id:
                    continue
                else:
                    found.append(await self._status(rule, seq, row))
        return found

    async def _status(self, rule: RoutingRule, seq: int, row: OutboxRow) -> DeliveryStatus:
        if not self.router(rule).owed(row):
            return DeliveryStatus(rule.destination, seq, row.message_id, "not_owed")
        specs = self._specs(rule.destination)
        subject = self.layout.subject_for(row)
        durable = next((d for d, s, _ in specs if s == subject), specs[0][0])
        if await self._floor(durable) >= seq:
            return DeliveryStatus(rule.destination, seq, row.message_id, DELIVERED, 1)
        return DeliveryStatus(rule.destination, seq, row.message_id, "not_reached")

    async def seqs_of(self, message_id: str) -> list[int]:
        """The stream sequences of a messageId, from the dedup markers (written with the
        sequence of the message they mark), under each source it may have come from."""
        found = []
        for source in self._sources or ("",):
            key = dedup_id(
                OutboxRow(message_id, source, "", None, None, None, "", ""), by_source=bool(source)
            )
            subject = self.layout.dedup_subject(key)
            try:
                marker = await self._js.get_last_msg(self.layout.dedup_stream, subject)
            except NotFoundError:
                continue
            if marker.data and marker.data.isdigit():
                found.append(int(marker.data))
        return found


def _updated(row: LedgerRow | None, destination: str, o: Outcome, at: str) -> LedgerRow:
    if row is None:
        row = LedgerRow(
            destination=destination,
            seq=o.seq,
            message_id=o.message_id,
            order_key=o.order_key,
            state=o.state,
            created_at=at,
        )
    row.attempts = row.attempts + 1 if o.origin == "replay" else o.attempt
    row.state, row.last_status, row.last_error = o.state, o.status, o.error
    row.first_attempt_at = row.first_attempt_at or o.first_attempt_at
    row.next_attempt_at = o.next_attempt_at if o.state in UNFINISHED else None
    row.finished_at = o.finished_at
    if o.attempt > 0:
        row.history.append(
            AttemptRow(o.attempt, o.started_at, o.duration_ms, o.status, o.error, o.state)
        )
    return row


def _not_counted(destination: str, received_at: str, reason: str | None) -> None:
    """Where nothing counts what the lanes are handed (a CLI command's store)."""


def _giving_up(why: str, at: str) -> Callable[[LedgerRow], bool]:
    """An edit making an unfinished row dead, saying why."""

    def give_up(row: LedgerRow) -> bool:
        if row.state not in UNFINISHED:
            return False
        row.state, row.finished_at, row.next_attempt_at = DEAD, at, None
        row.last_error = why
        return True

    return give_up
