"""Prometheus metrics: ingest counters, delivery state and service restarts, one registry per
application."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cdpd import metrics_more
from cdpd.delivery.report import DestinationReport
from cdpd.delivery.store import STATES
from cdpd.outbox.consumers import ConsumerLag
from cdpd.supervise import Restarts

if TYPE_CHECKING:
    from cdpd.delivery.service import Delivery
    from cdpd.identity.stage import IdentityStage
    from cdpd.ingest.routes import Ingest
    from cdpd.privacy.portal import Portal
    from cdpd.warehouse.scheduler import Scheduler

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(
        self,
        restarts: Restarts | None = None,
        *,
        data_dir: Path | None = None,
        outbox_path: Path | None = None,
    ) -> None:
        self.restarts = restarts or Restarts()
        # HTTP answers by status, counted by the request wrapper (cdpd/web.py).
        self.answers: dict[int, int] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self._latency = Histogram(
            "cdpd_delivery_request_seconds",
            "Duration of requests to destinations",
            ["destination"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._observed: set[str] = set()
        self._collector = _Collector(self.restarts, self.answers, data_dir, outbox_path)
        self.registry.register(self._collector)

    def delivery_observer(self, destination: str) -> Callable[[float], None]:
        """Where a lane reports each request's duration, in seconds."""
        self._observed.add(destination)
        return self._latency.labels(destination).observe

    def keep_destinations(self, names: set[str]) -> None:
        """Forget the latencies of destinations a reload removed (they leave /metrics)."""
        for gone in self._observed - names:
            self._latency.remove(gone)
        self._observed &= names

    def attach(
        self,
        ingest: Ingest,
        delivery: Delivery,
        warehouses: Scheduler | None = None,
        identity: IdentityStage | None = None,
    ) -> None:
        self._collector.ingest = ingest
        self._collector.delivery = delivery
        if warehouses is not None:
            self._collector.warehouses = warehouses
        if identity is not None:
            self._collector.identity = identity

    def attach_ingest(self, ingest: Ingest) -> None:
        """Ingest alone: a node of the JetStream backend, whose other stages report their own."""
        self._collector.ingest = ingest

    def render(
        self, reports: list[DestinationReport], lags: list[ConsumerLag] | None = None
    ) -> bytes:
        """The text exposition, with outbox counts and consumer lags read just before."""
        self._collector.reports = reports
        self._collector.lags = lags or []
        return generate_latest(self.registry)


class _Collector(Collector):
    def __init__(
        self,
        restarts: Restarts,
        answers: dict[int, int],
        data_dir: Path | None,
        outbox_path: Path | None,
    ) -> None:
        self.restarts = restarts
        self.answers = answers
        self.data_dir = data_dir
        self.outbox_path = outbox_path
        self.ingest: Ingest | None = None
        self.delivery: Delivery | None = None
        self.warehouses: Scheduler | None = None
        self.identity: IdentityStage | None = None
        self.reports: list[DestinationReport] = []
        self.lags: list[ConsumerLag] = []

    def collect(self) -> Iterator[Metric]:
        if self.ingest is not None:
            yield from _ingest_metrics(self.ingest)
        if self.delivery is not None:
            yield from _lane_metrics(self.delivery)
        yield from _outbox_metrics(self.reports)
        if self.identity is not None:
            yield from _identity_metrics(self.identity)
        yield _restart_metrics(self.restarts)
        yield metrics_more.http_answers(self.answers)
        if self.data_dir is not None and self.outbox_path is not None:
            yield from metrics_more.storage(self.data_dir, self.outbox_path)
        yield from metrics_more.warehouses(self.warehouses, self.lags)


def _ingest_metrics(ingest: Ingest) -> Iterator[Metric]:
    messages = CounterMetricFamily(
        "cdpd_ingest_messages", "Messages accepted or dropped as duplicates", labels=["outcome"]
    )
    messages.add_metric(["accepted"], ingest.accepted)
    messages.add_metric(["duplicate"], ingest.duplicates)
    yield messages
    rejected = CounterMetricFamily(
        "cdpd_ingest_rejected", "Messages rejected, by reason", labels=["reason"]
    )
    for reason, count in sorted(ingest.rejected.items()):
        rejected.add_metric([reason], count)
    yield rejected
    governance = ingest.governance
    violations = CounterMetricFamily(
        "cdpd_protocols_violations", "Tracking plan violations found", labels=["source"]
    )
    for source, count in sorted(governance.violations.items()):
        violations.add_metric([source], count)
    yield violations
    blocked = CounterMetricFamily(
        "cdpd_protocols_blocked", "Messages blocked by governance", labels=["source"]
    )
    for source, count in sorted(governance.blocked.items()):
        blocked.add_metric([source], count)
    yield blocked
    suppressed = CounterMetricFamily(
        "cdpd_privacy_suppressed",
        "Messages of suppressed users, answered and not stored",
        labels=["source"],
    )
    for source, count in sorted(governance.suppressions.suppressed.items()):
        suppressed.add_metric([source], count)
    yield suppressed
    yield from _privacy_metrics(governance.privacy)


def _privacy_metrics(privacy: Portal) -> Iterator[Metric]:
    seen = GaugeMetricFamily(
        "cdpd_privacy_fields_seen", "Field paths privacy detection knows", labels=["source"]
    )
    for source, count in sorted(privacy.fields_seen().items()):
        seen.add_metric([source], count)
    yield seen
    classified = GaugeMetricFamily(
        "cdpd_privacy_inventory_fields", "Classified fields, by class", labels=["class"]
    )
    for class_ in ("red", "yellow", "green"):
        count = sum(1 for found in privacy.inventory.classes.values() if found == class_)
        classified.add_metric([class_], count)
    yield classified
    removed = CounterMetricFamily(
        "cdpd_privacy_fields_removed",
        "Messages a source's privacy control removed fields from",
        labels=["source"],
    )
    for source, count in sorted(privacy.fields_removed.items()):
        removed.add_metric([source], count)
    yield removed


def _lane_metrics(delivery: Delivery) -> Iterator[Metric]:
    outcomes = CounterMetricFamily(
        "cdpd_delivery_outcomes",
        "Attempt outcomes per delivered message since start",
        labels=["destination", "outcome"],
    )
    errors = CounterMetricFamily(
        "cdpd_delivery_errors", "Failed attempts by status", labels=["destination", "status"]
    )
    in_flight = GaugeMetricFamily(
        "cdpd_delivery_in_flight", "Deliveries being attempted", labels=["destination"]
    )
    unhealthy = GaugeMetricFamily(
        "cdpd_delivery_unhealthy", "1 after a 401 or 403 until a success", labels=["destination"]
    )
    circuit = GaugeMetricFamily(
        "cdpd_delivery_circuit_open",
        "1 while the lane's circuit is open or probing (the destination keeps failing)",
        labels=["destination"],
    )
    for name, lane in delivery.lanes.items():
        stats = lane.stats
        circuit.add_metric([name], int(lane.circuit.state != "closed"))
        for outcome, count in (
            ("delivered", stats.delivered),
            ("retrying", stats.retried),
            ("dead", stats.dead),
        ):
            outcomes.add_metric([name, outcome], count)
        for status, count in sorted(stats.errors_by_status.items()):
            errors.add_metric([name, status], count)
        in_flight.add_metric([name], stats.in_flight)
        unhealthy.add_metric([name], int(stats.unhealthy))
    yield from (outcomes, errors, in_flight, unhealthy, circuit)


def _outbox_metrics(reports: list[DestinationReport]) -> Iterator[Metric]:
    deliveries = GaugeMetricFamily(
        "cdpd_deliveries",
        "Unfinished and dead deliveries in the outbox, by state",
        labels=["destination", "state"],
    )
    for report in reports:
        for state in STATES:
            if state == "delivered":  # cdpd_delivery_outcomes_total counts those
                continue
            deliveries.add_metric([report.destination, state], getattr(report, state))
    yield deliveries
    backlog = GaugeMetricFamily(
        "cdpd_delivery_backlog",
        "Messages past the destination lane's position (not reached yet)",
        labels=["destination"],
    )
    for report in reports:
        backlog.add_metric([report.destination], report.backlog)
    yield backlog


def _identity_metrics(identity: IdentityStage) -> Iterator[Metric]:
    lag = GaugeMetricFamily(
        "cdpd_identity_lag_messages", "Messages in the outbox not resolved into profiles yet"
    )
    lag.add_metric([], identity.lag_messages)
    yield lag
    resolved = CounterMetricFamily(
        "cdpd_identity_resolved", "Messages resolved into profiles since start"
    )
    resolved.add_metric([], identity.resolved)
    yield resolved
    profiles = GaugeMetricFamily(
        "cdpd_identity_profiles",
        "Profiles (not merged into another), by collection",
        labels=["collection"],
    )
    for collection, count in sorted(identity.profile_counts().items()):
        profiles.add_metric([collection], count)
    yield profiles


def _restart_metrics(restarts: Restarts) -> Metric:
    family = CounterMetricFamily(
        "cdpd_service_restarts",
        "Restarts of background services after an unexpected exception (log: service_failed)",
        labels=["service"],
    )
    for service, count in sorted(restarts.counts.items()):
        family.add_metric([service], count)
    return family
