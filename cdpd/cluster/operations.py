"""What operators ask of delivery on the JetStream backend, answered cluster-wide from any node:
the per-destination report (`cdpd deliveries stats`, `/admin/deliveries`, `/metrics`) from the
consumers' state, the ledger (`CDPD_ledger`) and the dead stream's per-subject counts, dead
letters, and `retry` (close the shared circuit so every node sends at once). Replay and
`deliveries show` are the delivery store's (cdpd/cluster/store.py).

The report's fields keep their SQLite meaning where the cluster has one: `pending` and
`backlog` are messages the destination's consumers have not handed out yet (messages it is not
owed included: routing happens in the lanes), `in_flight` the messages handed out and not yet
settled (being sent, or waiting for a retry's delay), `retrying` the messages whose last
attempt failed and that wait for the next (their ledger rows), `dead` the dead letters kept.
`delivered`, latencies and errors are the answering node's own figures since it started."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from cdpd.cluster import dead
from cdpd.cluster.lane import JetStreamLane
from cdpd.cluster.layout import Layout
from cdpd.cluster.settle import consumer_specs
from cdpd.cluster.shared import close_circuit, read_circuit
from cdpd.cluster.store import JetStreamDeliveryStore
from cdpd.delivery import report
from cdpd.delivery.report import DestinationReport, LastError
from cdpd.delivery.store import DeadDelivery as DeadLetter
from cdpd.destinations.settings import Destination
from cdpd.model.timestamps import format_ms, now_ms


async def reports(
    store: JetStreamDeliveryStore,
    js: JetStreamContext,
    destinations: Sequence[Destination],
    lanes: Mapping[str, JetStreamLane] | None = None,
) -> list[DestinationReport]:
    layout = store.layout
    dead_counts = await dead.counts(js, layout)
    ledger = await store.counts()
    circuits = await js.key_value(layout.circuits_bucket)
    found = []
    for destination in destinations:
        entry = DestinationReport(destination.name, dead=dead_counts.get(destination.name, 0))
        for durable, _, _ in consumer_specs(layout, destination):
            try:
                info = await js.consumer_info(layout.stream, durable)
            except NotFoundError:
                continue  # no node has started with this destination yet
            entry.pending += info.num_pending or 0
            entry.in_flight += info.num_ack_pending or 0
        entry.retrying = ledger.get(destination.name, {}).get("retrying", 0)
        entry.backlog = entry.pending
        entry.circuit = (await read_circuit(circuits, destination.name)).state
        lane = (lanes or {}).get(destination.name)
        if lane is not None:
            _add_lane_figures(entry, lane)
        found.append(entry)
    return found


def _add_lane_figures(entry: DestinationReport, lane: JetStreamLane) -> None:
    stats = lane.stats
    entry.delivered = stats.delivered
    entry.sending = stats.in_flight
    entry.latency_p50_ms = stats.percentile_ms(0.50)
    entry.latency_p95_ms = stats.percentile_ms(0.95)
    entry.errors_by_status = dict(stats.errors_by_status)
    entry.unhealthy = stats.unhealthy
    if stats.last_error_at is not None:
        entry.last_error = LastError(
            stats.last_error_at,
            stats.last_error_status,
            stats.last_error,
            stats.last_error_message_id or "",
        )


async def dead_deliveries(
    js: JetStreamContext, layout: Layout, destination: str | None, limit: int
) -> list[report.DeadDelivery]:
    """The most recent dead letters first, as `cdpd deliveries dead` shows them (`id` is the
    letter's sequence in the dead stream)."""
    letters = await dead.dead_letters(js, layout, destination, 10**6)
    newest = sorted(letters, key=lambda letter: letter[0], reverse=True)[:limit]
    return [as_listed(seq, d) for seq, d, _, _ in newest]


def as_listed(seq: int, letter: DeadLetter) -> report.DeadDelivery:
    """A dead letter as `cdpd deliveries dead` lists it: `id` is its sequence in the dead
    stream (the letter's own `seq` is the message's, in the messages stream)."""
    d = letter
    return report.DeadDelivery(
        seq, d.destination, d.message_id, d.attempts, d.last_status, d.last_error, d.finished_at
    )


async def retry(
    store: JetStreamDeliveryStore, js: JetStreamContext, destination: Destination, node: str
) -> int:
    """Close the destination's shared circuit (every node's lane sends again at once); how
    many messages wait for a retry (their ledger rows now say due). A retry's delay, once
    JetStream holds it, is not shortened."""
    await close_circuit(await js.key_value(store.layout.circuits_bucket), destination.name, node)
    return await store.retry_now(destination.name, format_ms(now_ms()))
