"""Assembly: open the outbox, start the background tasks, serve HTTP, and undo it all in order.

Every background task runs under `cdpd.supervise`: an unexpected exception is logged and the
task restarts after a pause; it never ends the daemon. Shutdown is an ordered drain: stop
accepting connections, let in-flight requests finish (their messages are committed), let the
warehouse syncs commit their batch and delivery finish its attempts, let the writer commit what
is pending, stop the space watch, and close the outbox last.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog
import uvloop
from aiohttp import web

from cdpd import logs
from cdpd import web as cdpd_web
from cdpd.clock import Clock, SystemClock
from cdpd.config import Config, ConfigError
from cdpd.delivery.service import Delivery
from cdpd.governance.service import GovernanceService
from cdpd.governance.stage import Governance
from cdpd.identity import stage as identity_stage
from cdpd.identity.stage import IdentityStage
from cdpd.ingest.routes import Ingest
from cdpd.logs import LineWriter
from cdpd.metrics import Metrics
from cdpd.outbox import consumers, schema, space
from cdpd.outbox.space import SpaceWatch
from cdpd.outbox.writer import OutboxWriter
from cdpd.supervise import Restarts, supervise
from cdpd.systemd import Notifier
from cdpd.warehouse.position import prunable_seq
from cdpd.warehouse.scheduler import Scheduler

log = structlog.get_logger()


@dataclass(frozen=True)
class Running:
    """A serving cdpd: where it listens and its stages, for the CLI and for tests."""

    url: str
    app: web.Application
    writer: OutboxWriter
    delivery: Delivery
    warehouses: Scheduler
    restarts: Restarts
    identity: IdentityStage | None = None

    @property
    def ingest(self) -> Ingest:
        return self.app[cdpd_web.INGEST]


async def _mirror_warehouse(writer: OutboxWriter, name: str, seq: int) -> None:
    await writer.transact(
        functools.partial(consumers.mirror, name=f"warehouse:{name}", kind="warehouse", seq=seq)
    )


@asynccontextmanager
async def running(
    config: Config,
    *,
    clock_s: Callable[[], float] = time.monotonic,
    clock: Clock | None = None,
    free_bytes: Callable[[Path], int] = space.free_bytes,
) -> AsyncIterator[Running]:
    """Serve `config` until the block exits. The clocks are replaceable so tests control time:
    `clock_s` for the outbox's refusal timer, `clock` for the background services (delivery
    backoffs and retention, the space watch's timer, warehouse intervals, restart pauses).
    `free_bytes` measures the disk under the outbox."""
    storage = config.storage
    clock = clock or SystemClock()
    restarts = Restarts()
    governance = Governance(config)  # tracking plans load (or fail) before anything starts
    async with schema.connect(
        storage.outbox_path, synchronous=storage.synchronous, max_bytes=storage.max_outbox_bytes
    ) as conn:
        writer = OutboxWriter(
            conn,
            commit_max_rows=storage.commit_max_rows,
            dedup_window_s=storage.dedup_window_s,
            full_retry_after_s=storage.full_retry_after_s,
            clock_s=clock_s,
        )
        await writer.start()
        space_watch = SpaceWatch(
            writer,
            Path(storage.data_dir),
            min_free_bytes=storage.min_free_disk_bytes,
            retry_after_s=storage.full_retry_after_s,
            measure=free_bytes,
            clock=clock,
        )
        await space_watch.check()
        metrics = Metrics(restarts)
        warehouses = Scheduler(
            config, clock=clock, on_position=functools.partial(_mirror_warehouse, writer)
        )
        async with (
            schema.connect(storage.outbox_path, readonly=True) as reader,
            _outbound_session() as session,
            _identity(config, writer) as identity,
        ):
            delivery = Delivery(
                config,
                writer,
                session,
                clock,
                observer=metrics.delivery_observer,
                warehouse_position=functools.partial(prunable_seq, config),
                restarts=restarts,
            )
            # One stop event per phase of the drain, set in the order of the `finally` below.
            warehouses_stop, space_stop = asyncio.Event(), asyncio.Event()
            supervised = functools.partial(supervise, clock=clock, restarts=restarts)
            stages = cdpd_web.Stages(writer, reader, delivery, metrics, governance, identity)
            async with asyncio.TaskGroup() as tasks:
                writer_task = tasks.create_task(
                    supervised("outbox-writer", _writer_service(writer), asyncio.Event()),
                    name="outbox-writer",
                )
                tasks.create_task(
                    supervised("space-watch", space_watch.run, space_stop), name="space-watch"
                )
                await delivery.start()
                await writer.transact(  # warehouses no longer configured hold nothing back
                    functools.partial(
                        consumers.keep_only,
                        kind="warehouse",
                        names=[f"warehouse:{w.name}" for w in config.warehouses],
                    )
                )
                await writer.transact(  # without [identity], its position holds nothing back
                    functools.partial(
                        consumers.keep_only,
                        kind=identity_stage.CONSUMER_NAME,
                        names=[identity_stage.CONSUMER_NAME] if identity else [],
                    )
                )
                identity_stop = asyncio.Event()
                identity_task = None
                if identity is not None:
                    identity_task = tasks.create_task(
                        supervised("identity", identity.run, identity_stop), name="identity"
                    )
                # Not under `supervise` here: `Delivery.run` closes its destinations' clients
                # when it ends, so running it again would not be a restart. Its parts are
                # restarted inside `cdpd.delivery`.
                delivery_task = tasks.create_task(delivery.run(), name="delivery")
                for schedule in warehouses.schedules():
                    tasks.create_task(
                        supervised(schedule.name, schedule.run, warehouses_stop), name=schedule.name
                    )
                governance_work = GovernanceService(
                    writer,
                    governance,
                    clock,
                    prune_interval_s=config.delivery.prune_interval_s,
                )
                governance_stop = asyncio.Event()
                governance_task = tasks.create_task(
                    supervised("governance", governance_work.run, governance_stop),
                    name="governance",
                )
                try:
                    async with _serving_http(config, stages) as (url, app):
                        yield Running(
                            url=url,
                            app=app,
                            writer=writer,
                            delivery=delivery,
                            warehouses=warehouses,
                            restarts=restarts,
                            identity=identity,
                        )
                finally:
                    warehouses_stop.set()  # a sync commits the batch it is in; the TaskGroup waits
                    delivery.stop()  # lanes finish their attempts, unfinished claims go back
                    await delivery_task
                    governance_stop.set()  # writes the last schema counts
                    await governance_task
                    identity_stop.set()  # commits the batch it is resolving
                    if identity_task is not None:
                        await identity_task
                    writer.close()  # commits what is still pending, then its task ends
                    await writer_task
                    space_stop.set()


@asynccontextmanager
async def _identity(config: Config, writer: OutboxWriter) -> AsyncIterator[IdentityStage | None]:
    """The identity stage when `[identity]` is configured, woken by every commit."""
    if config.identity is None:
        yield None
        return
    async with identity_stage.opened(
        config, config.storage.outbox_path, writer.transact, lambda: writer.last_seq
    ) as identity:
        writer.on_messages(identity.consumer.new_messages)
        yield identity


def _writer_service(writer: OutboxWriter) -> Callable[[asyncio.Event], Awaitable[None]]:
    """The writer as a service. Its stop is `close()`, not an event: closing must commit what
    is pending, so a restart pause is never cut short (the supervisor gets an event that is
    never set, and ends when `run` returns after `close()`)."""

    async def run(_: asyncio.Event) -> None:
        await writer.run()

    return run


@asynccontextmanager
async def _outbound_session() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client for every destination; each lane caps its own concurrency."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@asynccontextmanager
async def _serving_http(
    config: Config, stages: cdpd_web.Stages
) -> AsyncIterator[tuple[str, web.Application]]:
    drain = cdpd_web.Drain()
    app = cdpd_web.build(config, stages, drain)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=config.server.shutdown_timeout_s,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port)
        await site.start()
        try:
            yield _url(runner), app
        finally:
            await site.stop()  # no new connections
            open_connections = len(runner.server.connections) if runner.server else 0
            await drain.finish(config.server.shutdown_timeout_s, open_connections)
    finally:
        await runner.cleanup()  # closes the now idle connections


def _url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def serve(config: Config, log_writer: LineWriter | None = None) -> int:
    """Run until SIGTERM or SIGINT; returns the process exit code."""
    notifier = Notifier()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running(config) as server:
        # SIGHUP (systemctl reload) reads the tracking plans again; the rest of the config
        # needs a restart.
        loop.add_signal_handler(signal.SIGHUP, reload_plans, server)
        log.info("listening", url=server.url, outbox=str(config.storage.outbox_path))
        notifier.ready()
        supervised = functools.partial(supervise, clock=SystemClock(), restarts=server.restarts)
        async with asyncio.TaskGroup() as tasks:
            if notifier.watchdog_interval_s:
                # Pinged from the event loop, so a stuck loop gets the service restarted.
                ping = functools.partial(_every, notifier.watchdog_interval_s, notifier.watchdog)
                tasks.create_task(supervised("watchdog", ping, stop), name="watchdog")
            if log_writer is not None:
                flush = functools.partial(_every, logs.FLUSH_INTERVAL_S, log_writer.flush)
                tasks.create_task(supervised("log-flush", flush, stop), name="log-flush")
            await stop.wait()
        log.info("stopping")
        notifier.stopping()
    log.info("stopped")
    if log_writer is not None:
        log_writer.flush()
    return 0


def reload_plans(server: Running) -> None:
    """Swap in freshly loaded tracking plans; when one does not load, keep those in force.
    Runs on the event loop between requests, so each request is checked by one set."""
    governance = server.ingest.governance
    try:
        governance.reload()
    except ConfigError as exc:
        log.error("tracking_plans_reload_failed", error=str(exc))
        return
    log.info("tracking_plans_reloaded", plans=sorted(governance.plans))


async def _every(interval_s: float, action: Callable[[], None], stop: asyncio.Event) -> None:
    """Call `action` now and every `interval_s` until `stop` is set."""
    while not stop.is_set():
        action()
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


def run(config: Config, log_writer: LineWriter | None = None) -> int:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(config, log_writer))
