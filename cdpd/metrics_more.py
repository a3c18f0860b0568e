"""The /metrics families about the daemon's surroundings: HTTP answers by status, the outbox's
size and the disk's free space, and how far each warehouse is behind with its last good sync."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from cdpd.model.timestamps import parse_ms
from cdpd.outbox import space
from cdpd.outbox.consumers import ConsumerLag

if TYPE_CHECKING:
    from cdpd.warehouse.scheduler import Scheduler

WAREHOUSE_CONSUMER_PREFIX = "warehouse:"


def http_answers(answers: dict[int, int]) -> Metric:
    family = CounterMetricFamily(
        "cdpd_http_responses", "HTTP answers given, by status", labels=["status"]
    )
    for status, count in sorted(answers.items()):
        family.add_metric([str(status)], count)
    return family


def storage(data_dir: Path, outbox_path: Path) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "cdpd_outbox_bytes",
        "Size of the outbox file and its write-ahead log",
        value=space.outbox_bytes(outbox_path),
    )
    try:
        free = space.free_bytes(data_dir)
    except OSError:
        return
    yield GaugeMetricFamily(
        "cdpd_disk_free_bytes", "Free space on the disk under data_dir", value=free
    )


def warehouses(scheduler: Scheduler | None, lags: list[ConsumerLag]) -> Iterator[Metric]:
    behind = GaugeMetricFamily(
        "cdpd_warehouse_lag_messages",
        "Messages stored that the warehouse has not loaded yet",
        labels=["warehouse"],
    )
    seconds = GaugeMetricFamily(
        "cdpd_warehouse_lag_seconds",
        "Age of the oldest message the warehouse has not loaded (0 when up to date)",
        labels=["warehouse"],
    )
    last_success = GaugeMetricFamily(
        "cdpd_warehouse_last_success_timestamp_seconds",
        "When the warehouse's last successful sync finished (Unix time; since start)",
        labels=["warehouse"],
    )
    configured = {w.name for w in scheduler.warehouses} if scheduler is not None else set()
    for lag in lags:
        name = lag.name.removeprefix(WAREHOUSE_CONSUMER_PREFIX)
        if lag.kind == "warehouse" and name in configured:
            behind.add_metric([name], lag.messages_behind)
            seconds.add_metric([name], lag.seconds_behind)
    for name in sorted(configured):
        assert scheduler is not None
        done = [r for r in scheduler.reports.get(name, []) if r.status == "success"]
        if done and done[-1].finished_at is not None:
            last_success.add_metric([name], parse_ms(done[-1].finished_at) / 1000)
    yield from (behind, seconds, last_success)
