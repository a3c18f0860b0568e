"""The consumers a config builds (delivery, warehouse schedules) and `reload(new_config)`: the
one entry point that swaps the whole configuration of a running cdpd (SIGHUP, `systemctl
reload`, and later the web console writing conf.d/ files all call it).

A reload builds everything the new config needs first (tracking plans, destinations and their
credentials); when any of that fails it raises ConfigError and nothing changes. Then it swaps:
sources and write keys at once (the next request sees them); the warehouse schedules after their
sync in progress commits its batch; delivery by an ordered stop (attempts in flight finish, each
within its destination's `timeout_s`; unfinished claims go back to pending) and a start from
the stored positions, so no delivery is lost or sent twice. The lanes' counters since start (in
/metrics) begin again with the new lanes. The outbox writer and the HTTP server keep running
throughout, so ingest never pauses. `server`, `storage`, `logging` and `admin.listen` take
effect at the next restart (logged).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import msgspec
import structlog

from cdpd.admin import Admin
from cdpd.clock import Clock
from cdpd.config import Config, ConfigError
from cdpd.console.flow import Flow
from cdpd.delivery.service import Delivery
from cdpd.governance.stage import Governance
from cdpd.ingest.routes import Ingest
from cdpd.metrics import Metrics
from cdpd.outbox import consumers
from cdpd.outbox.writer import OutboxWriter
from cdpd.privacy.portal import Portal
from cdpd.supervise import Restarts, supervise
from cdpd.warehouse.position import prunable_seq
from cdpd.warehouse.scheduler import Scheduler

log = structlog.get_logger()

# Sections a running daemon cannot change: the socket, the outbox file, the log set-up.
RESTART_SECTIONS = ("server", "storage", "logging", "identity")
# What delivery is built from; when none of it changed a reload leaves delivery running.
DELIVERY_SECTIONS = ("destinations", "transformations", "delivery", "warehouses", "privacy")


@dataclass
class Edges:
    """The long-lived parts a reload reconfigures in place (set once HTTP is built)."""

    ingest: Ingest
    admin: Admin
    metrics: Metrics


class Consumers:
    """Delivery and the warehouse schedules of the config in force, as tasks in the app's
    TaskGroup; `reload` replaces them."""

    def __init__(
        self,
        config: Config,
        *,
        tasks: asyncio.TaskGroup,
        writer: OutboxWriter,
        session: aiohttp.ClientSession,
        clock: Clock,
        metrics: Metrics,
        restarts: Restarts,
        governance: Governance,
        flow: Flow | None = None,
    ) -> None:
        self.config = config
        self._flow = flow
        self._tasks = tasks
        self._writer = writer
        self._session = session
        self._clock = clock
        self._metrics = metrics
        self._restarts = restarts
        self._governance = governance
        self.edges: Edges | None = None
        self.reloads = 0
        self._lock = asyncio.Lock()
        self.delivery = self._delivery(config)
        self.warehouses = self._scheduler(config)
        self._delivery_task: asyncio.Task[None] | None = None
        self._warehouse_tasks: list[asyncio.Task[None]] = []
        self._warehouses_stop = asyncio.Event()

    # -- building ----------------------------------------------------------------------------

    def _delivery(self, config: Config, privacy: Portal | None = None) -> Delivery:
        return Delivery(
            config,
            self._writer,
            self._session,
            self._clock,
            observer=self._observer,
            warehouse_position=functools.partial(prunable_seq, config),
            restarts=self._restarts,
            privacy=privacy or self._governance.privacy,
        )

    def _observer(self, destination: str) -> Callable[[float], None]:
        """A lane's request durations go to /metrics and to the console's latency counts."""
        to_metrics = self._metrics.delivery_observer(destination)
        if self._flow is None:
            return to_metrics
        to_flow = self._flow.observer(destination)

        def observe(duration_s: float) -> None:
            to_metrics(duration_s)
            to_flow(duration_s)

        return observe

    def _scheduler(self, config: Config) -> Scheduler:
        return Scheduler(config, clock=self._clock, on_position=self._mirror_warehouse)

    async def _mirror_warehouse(self, name: str, seq: int) -> None:
        await self._writer.transact(
            functools.partial(consumers.mirror, name=f"warehouse:{name}", kind="warehouse", seq=seq)
        )

    # -- running -----------------------------------------------------------------------------

    async def start_delivery(self) -> None:
        """Recover and set positions, then deliver; once the writer runs, before ingest opens."""
        await self.delivery.start()
        if self._flow is not None:
            self._flow.follow(self.config, self.delivery.lanes)
        # Not under `supervise`: `Delivery.run` closes its destinations' clients when it ends,
        # so running it again would not be a restart. Its parts are restarted inside it.
        self._delivery_task = self._tasks.create_task(self.delivery.run(), name="delivery")

    async def stop_delivery(
        self, drain_timeout_s: float | None = None, *, let_attempts_finish: bool = False
    ) -> None:
        """Lanes finish their attempts (within `drain_timeout_s` at shutdown), unfinished
        claims go back to pending."""
        self.delivery.stop(drain_timeout_s, let_attempts_finish=let_attempts_finish)
        if self._delivery_task is not None:
            await self._delivery_task
            self._delivery_task = None

    async def start_warehouses(self) -> None:
        # Warehouses no longer configured hold nothing back.
        names = [f"warehouse:{w.name}" for w in self.config.warehouses]
        await self._writer.transact(
            functools.partial(consumers.keep_only, kind="warehouse", names=names)
        )
        self._warehouses_stop = asyncio.Event()
        supervised = functools.partial(supervise, clock=self._clock, restarts=self._restarts)
        self._warehouse_tasks = [
            self._tasks.create_task(
                supervised(schedule.name, schedule.run, self._warehouses_stop), name=schedule.name
            )
            for schedule in self.warehouses.schedules()
        ]

    def signal_warehouses_stop(self) -> None:
        self._warehouses_stop.set()

    async def stop_warehouses(self, timeout_s: float | None = None) -> None:
        """A sync in progress commits the batch it is in; one still running after `timeout_s`
        (SIGTERM's budget) is cancelled, rolls its batch back, and loads it again next time."""
        self._warehouses_stop.set()
        tasks, self._warehouse_tasks = self._warehouse_tasks, []
        if not tasks:
            return
        _, unfinished = await asyncio.wait(tasks, timeout=timeout_s)
        for task in unfinished:
            log.warning("shutdown_timeout_cancelled", task=task.get_name(), timeout_s=timeout_s)
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished)

    # -- reloading ---------------------------------------------------------------------------

    async def reload(self, new_config: Config) -> list[str]:
        """Put `new_config` in force; returns the sections that changed. Raises ConfigError
        (and keeps the config in force) when the new one cannot be put in force."""
        async with self._lock:
            return await self._reload(new_config)

    async def _reload(self, new_config: Config) -> list[str]:
        old = self.config
        for section in RESTART_SECTIONS:
            if getattr(new_config, section) != getattr(old, section):
                log.warning("config_reload_needs_restart", section=section)
        config = msgspec.structs.replace(
            new_config, **{section: getattr(old, section) for section in RESTART_SECTIONS}
        )
        if config.admin.listen != old.admin.listen:  # a socket, as server.listen
            log.warning("config_reload_needs_restart", section="admin.listen")
            admin = msgspec.structs.replace(config.admin, listen=old.admin.listen)
            config = msgspec.structs.replace(config, admin=admin)
        changed = [
            field
            for field in config.__struct_fields__
            if getattr(config, field) != getattr(old, field)
        ]
        prepared = self._governance.prepare(config)  # plan files: may raise ConfigError
        new_delivery = (
            self._delivery(config, prepared.privacy)
            if any(s in changed for s in DELIVERY_SECTIONS)
            else None
        )  # credentials resolved here: may raise ConfigError
        self._governance.put_in_force(config, prepared)
        self.config = config
        if self.edges is not None:
            self.edges.ingest.reconfigure(config)
        if "warehouses" in changed or "privacy" in changed:  # controls apply at load
            await self.stop_warehouses()
            self.warehouses = self._scheduler(config)
            await self.start_warehouses()
        if new_delivery is not None:
            await self.stop_delivery(let_attempts_finish=True)
            self.delivery = new_delivery
            await self.start_delivery()
        if self.edges is not None:
            self.edges.admin.reconfigure(config, self.delivery)
            self.edges.metrics.attach(self.edges.ingest, self.delivery, self.warehouses)
            self.edges.metrics.keep_destinations(set(self.delivery.lanes))
        self.reloads += 1
        return changed


def reload_from(
    load: Callable[[], Config], reload: Callable[[Config], Awaitable[list[str]]]
) -> Callable[[], Awaitable[None]]:
    """The SIGHUP handler's work: read the config file again and put it in force, logging the
    outcome; a file that does not load or validate is refused and the old config kept."""

    async def run() -> None:
        try:
            changed = await reload(load())
        except ConfigError as exc:
            log.error("config_reload_failed", error=str(exc))
            return
        log.info("config_reloaded", changed=changed)

    return run
