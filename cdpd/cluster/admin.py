"""The delivery part of the admin API and /metrics on the JetStream backend: the same paths and
JSON shapes as on SQLite (cdpd/admin.py), with the cluster's figures (cdpd/cluster/operations.py),
answered by any node. Only the admin token is accepted: workspace tokens live in the console's
SQLite store, which is single-node."""

from __future__ import annotations

from collections.abc import Iterator

import structlog
from aiohttp import web
from nats.js import JetStreamContext
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cdpd.admin import ReplayRequest, RetryRequest, _json, _limit, _text, _time
from cdpd.cluster import operations
from cdpd.cluster.delivery import ClusterDelivery
from cdpd.cluster.node_web import cluster_answers, require_admin
from cdpd.config import Config, Destination
from cdpd.delivery import replay
from cdpd.delivery.report import DestinationReport
from cdpd.delivery.service import routing_rule
from cdpd.ingest.errors import ApiError, decoded_request

log = structlog.get_logger()

CLUSTER_STATES = ("pending", "in_flight", "retrying", "dead")


class ClusterAdmin:
    def __init__(self, config: Config, js: JetStreamContext, delivery: ClusterDelivery) -> None:
        self._token = config.admin.resolved_token()
        self._destinations = {d.name: d for d in config.destinations}
        self._js = js
        self._delivery = delivery
        self._layout = delivery.layout
        self.collector = DeliveryCollector(delivery)

    def routes(self) -> list[web.RouteDef]:
        """The admin endpoints (a node serves its own /metrics, with `collector` in it)."""
        return [
            web.get("/admin/deliveries", self.deliveries),
            web.get("/admin/deliveries/dead", self.dead),
            web.post("/admin/replay", self.replay),
            web.post("/admin/deliveries/retry", self.retry),
            web.get("/admin/deliveries/messages/{message_id}", self.show),
        ]

    async def refresh_metrics(self) -> None:
        """Read the cluster's figures for the next /metrics (the node calls it per scrape)."""
        try:
            self.collector.reports = await self._reports()
        except Exception as exc:  # the cluster did not answer: the last figures stand
            log.warning("delivery_metrics_unread", error=repr(exc))

    async def deliveries(self, request: web.Request) -> web.Response:
        self._authorize(request)
        with cluster_answers():
            return _json({"destinations": await self._reports()})

    async def dead(self, request: web.Request) -> web.Response:
        self._authorize(request)
        destination = _text(request.query.get("destination"), "destination")
        if destination is not None and destination not in self._destinations:
            raise _unknown(destination)
        limit = _limit(request.query.get("limit", "100"))
        with cluster_answers():
            found = await operations.dead_deliveries(self._js, self._layout, destination, limit)
        return _json({"dead": found})

    async def replay(self, request: web.Request) -> web.Response:
        self._authorize(request)
        asked = decoded_request(await request.read(), ReplayRequest, "replay")
        destination = self._destination(asked.destination)
        if not destination.enabled:
            raise ApiError(409, "destination_disabled", f"{destination.name} is disabled")
        store = self._delivery.store
        if asked.dead:
            with cluster_answers():
                count = await replay.replay_dead(store, destination)
        elif asked.since:
            since, until = _time(asked.since, "since"), _time(asked.until, "until", default=True)
            with cluster_answers():
                count = await replay.replay_range(store, destination, since, until, asked.source)
        else:
            raise ApiError(400, "invalid_request", "say what to replay: dead = true, or since")
        return _json({"destination": destination.name, "queued": count})

    async def show(self, request: web.Request) -> web.Response:
        """Where one message stands with each destination (found by its dedup marker)."""
        self._authorize(request)
        message_id = _text(request.match_info["message_id"], "message_id") or ""
        rules = [routing_rule(d) for d in self._destinations.values()]
        with cluster_answers():
            found = await self._delivery.store.show(message_id, rules)
        if not found:
            raise ApiError(404, "unknown_message", f"no message {message_id!r} in the cluster")
        return _json({"message_id": message_id, "deliveries": found})

    async def retry(self, request: web.Request) -> web.Response:
        self._authorize(request)
        asked = decoded_request(await request.read(), RetryRequest, "retry")
        destination = self._destination(asked.destination)
        node = self._delivery.node
        with cluster_answers():
            waiting = await operations.retry(self._delivery.store, self._js, destination, node)
        lane = self._delivery.lanes.get(destination.name)
        if lane is not None:
            lane.shared.circuit.succeeded()
        return _json({"destination": destination.name, "due_now": waiting})

    async def _reports(self) -> list[DestinationReport]:
        return await operations.reports(
            self._delivery.store, self._js, list(self._destinations.values()), self._delivery.lanes
        )

    def _authorize(self, request: web.Request) -> None:
        require_admin(self._token, request)

    def _destination(self, name: str) -> Destination:
        if name not in self._destinations:
            raise _unknown(name)
        return self._destinations[name]


def _unknown(name: str) -> ApiError:
    return ApiError(404, "unknown_destination", f"no destination is named {name!r}")


class DeliveryCollector(Collector):
    """The delivery metrics of cdpd/metrics.py, cluster-wide where the cluster knows them
    (`reports`, read just before), the node's own figures beside them."""

    def __init__(self, delivery: ClusterDelivery) -> None:
        self.reports: list[DestinationReport] = []
        self._delivery = delivery

    def collect(self) -> Iterator[Metric]:
        deliveries = GaugeMetricFamily(
            "cdpd_deliveries",
            "Messages of each destination's consumers, by state, cluster-wide",
            labels=["destination", "state"],
        )
        backlog = GaugeMetricFamily(
            "cdpd_delivery_backlog",
            "Messages the destination's consumers have not handed out yet",
            labels=["destination"],
        )
        circuit = GaugeMetricFamily(
            "cdpd_delivery_circuit_open",
            "1 while the destination's shared circuit is open or probing",
            labels=["destination"],
        )
        for entry in self.reports:
            for state in CLUSTER_STATES:
                deliveries.add_metric([entry.destination, state], getattr(entry, state))
            backlog.add_metric([entry.destination], entry.backlog)
            circuit.add_metric([entry.destination], int(entry.circuit != "closed"))
        yield from (deliveries, backlog, circuit)
        yield from self._node_figures()

    def _node_figures(self) -> Iterator[Metric]:
        outcomes = CounterMetricFamily(
            "cdpd_delivery_outcomes",
            "Attempt outcomes on this node since start",
            labels=["destination", "outcome"],
        )
        in_flight = GaugeMetricFamily(
            "cdpd_delivery_in_flight", "Messages this node is sending", labels=["destination"]
        )
        for name, lane in self._delivery.lanes.items():
            stats = lane.stats
            for outcome, count in (
                ("delivered", stats.delivered),
                ("retrying", stats.retried),
                ("dead", stats.dead),
            ):
                outcomes.add_metric([name, outcome], count)
            in_flight.add_metric([name], stats.in_flight)
        yield from (outcomes, in_flight)
