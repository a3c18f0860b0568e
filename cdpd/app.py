"""Assembly: open the outbox, start the background tasks, serve HTTP, and undo it all in order.

Every background task runs under `cdpd.supervise`: an unexpected exception is logged and the
task restarts after a pause; it never ends the daemon. Shutdown is an ordered drain: stop
accepting connections, let in-flight requests finish (their messages are committed), let the
warehouse syncs commit their batch and delivery finish its attempts, let the writer commit what
is pending, stop the space watch, and close the outbox last.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog
import uvloop
from aiohttp import web

from cdpd import __version__, listeners, logs, startup
from cdpd import web as cdpd_web
from cdpd.clock import Clock, SystemClock
from cdpd.cluster.node import Node, running_node
from cdpd.config import Config
from cdpd.config import load as load_config
from cdpd.console import state as console_state
from cdpd.console.flow import Flow
from cdpd.delivery.service import Delivery
from cdpd.engage import stage as engage_stage
from cdpd.engage.stage import EngageStage
from cdpd.governance.service import GovernanceService
from cdpd.governance.stage import Governance
from cdpd.identity import stage as identity_stage
from cdpd.identity.stage import IdentityStage
from cdpd.ingest.routes import Ingest
from cdpd.logs import LineWriter
from cdpd.metrics import Metrics
from cdpd.outbox import consumers, schema, space
from cdpd.outbox.lock import data_dir_lock
from cdpd.outbox.space import SpaceWatch
from cdpd.outbox.writer import OutboxWriter
from cdpd.privacy.regulations_service import RegulationService
from cdpd.reload import Consumers, Edges, reload_from
from cdpd.shutdown import ShutdownBudget
from cdpd.supervise import Restarts, supervise
from cdpd.systemd import Notifier
from cdpd.warehouse.scheduler import Scheduler

log = structlog.get_logger()


@dataclass(frozen=True)
class Running:
    """A serving cdpd: where it listens and its stages, for the CLI and for tests."""

    url: str
    app: web.Application
    writer: OutboxWriter
    consumers: Consumers
    restarts: Restarts
    regulations: RegulationService
    admin_url: str | None = None  # with `[admin] listen`: where /admin and /metrics are
    identity: IdentityStage | None = None
    engage: EngageStage | None = None

    @property
    def ingest(self) -> Ingest:
        return self.app[cdpd_web.INGEST]

    @property
    def delivery(self) -> Delivery:
        return self.consumers.delivery

    @property
    def warehouses(self) -> Scheduler:
        return self.consumers.warehouses

    @property
    def config(self) -> Config:
        return self.consumers.config

    async def reload(self, new_config: Config) -> list[str]:
        """Put `new_config` in force without a restart (see `cdpd.reload`); raises ConfigError
        and keeps the config in force when it cannot be."""
        return await self.consumers.reload(new_config)


@asynccontextmanager
async def running(
    config: Config,
    *,
    clock_s: Callable[[], float] = time.monotonic,
    clock: Clock | None = None,
    free_bytes: Callable[[Path], int] = space.free_bytes,
    config_path: str | Path | None = None,
) -> AsyncIterator[Running]:
    """Serve `config` until the block exits. The clocks are replaceable so tests control time:
    `clock_s` for the outbox's refusal timer, `clock` for the background services (delivery
    backoffs and retention, the space watch's timer, warehouse intervals, restart pauses).
    `free_bytes` measures the disk under the outbox. Raises StartupError (one line to show)
    when another cdpd holds the data folder or the port cannot be bound; both are checked
    before the outbox is opened. `config_path` is the file `config` was loaded from: the
    console's changes write to its conf.d directory and load it again (without it the console
    changes nothing)."""
    storage = config.storage
    clock = clock or SystemClock()
    restarts = Restarts()
    governance = Governance(config)  # tracking plans load (or fail) before anything starts
    with (
        data_dir_lock(Path(storage.data_dir)),
        contextlib.closing(startup.bind(config.server)) as sock,
        listeners.admin_socket(config) as admin_sock,
    ):
        async with (
            schema.connect(
                storage.outbox_path,
                synchronous=storage.synchronous,
                max_bytes=storage.max_outbox_bytes,
            ) as conn,
            space.checkpointer(storage.outbox_path) as checkpoint,
        ):
            writer = OutboxWriter(
                conn,
                commit_max_rows=storage.commit_max_rows,
                dedup_window_s=storage.dedup_window_s,
                dedup_scope=storage.dedup_scope,
                full_retry_after_s=storage.full_retry_after_s,
                clock_s=clock_s,
            )
            await writer.start()
            await space.bound_the_wal(conn, storage.min_free_disk_bytes)
            # Controls apply from the first message; the writer's task does not run yet.
            await governance.privacy.load_inventory(conn)
            space_watch = SpaceWatch(
                writer,
                Path(storage.data_dir),
                min_free_bytes=storage.min_free_disk_bytes,
                retry_after_s=storage.full_retry_after_s,
                measure=free_bytes,
                checkpoint=checkpoint,
                clock=clock,
            )
            await space_watch.check()
            metrics = Metrics(
                restarts, data_dir=Path(storage.data_dir), outbox_path=storage.outbox_path
            )
            flow = Flow(config, writer, clock)
            budget = ShutdownBudget(
                config.server.shutdown_timeout_s, delivery_drain_s=config.delivery.drain_timeout_s
            )
            async with (
                schema.connect(storage.outbox_path, readonly=True) as reader,
                console_state.connect(config.console.state_path(storage.data_dir)) as console,
                _outbound_session() as session,
                _identity(config, writer, governance.suppressions.of) as identity,
                _engage(config, identity, writer, clock) as engage,
                asyncio.TaskGroup() as tasks,
            ):
                supervised = functools.partial(supervise, clock=clock, restarts=restarts)
                writer_task = tasks.create_task(
                    supervised("outbox-writer", _writer_service(writer), asyncio.Event()),
                    name="outbox-writer",
                )
                space_stop = asyncio.Event()
                tasks.create_task(
                    supervised("space-watch", space_watch.run, space_stop), name="space-watch"
                )
                pipeline = Consumers(
                    config,
                    tasks=tasks,
                    writer=writer,
                    session=session,
                    clock=clock,
                    metrics=metrics,
                    restarts=restarts,
                    governance=governance,
                    flow=flow,
                )
                await pipeline.start_delivery()
                flow_stop = asyncio.Event()
                flow_task = tasks.create_task(
                    supervised("console-flow", flow.run, flow_stop), name="console-flow"
                )
                await pipeline.start_warehouses()
                regulations = RegulationService(
                    writer,
                    reader,
                    governance.suppressions,
                    pipeline,
                    session,
                    clock,
                    outbox_path=storage.outbox_path,
                    identity=identity,
                    privacy=lambda: governance.privacy,
                )
                await regulations.start()  # suppressions in force before ingest opens
                regulations_stop = asyncio.Event()
                regulations_task = tasks.create_task(
                    supervised("regulations", regulations.run, regulations_stop),
                    name="regulations",
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
                engage_stop = asyncio.Event()
                engage_task = None
                if engage is not None:
                    engage_task = tasks.create_task(
                        supervised("engage", engage.run, engage_stop), name="engage"
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
                stages = cdpd_web.Stages(
                    writer,
                    reader,
                    pipeline.delivery,
                    metrics,
                    governance,
                    console,
                    pipeline,
                    regulations,
                    identity,
                    Path(config_path) if config_path is not None else None,
                )
                try:
                    async with _serving_http(config, stages, budget, sock, admin_sock) as (
                        url,
                        app,
                        admin_url,
                    ):
                        pipeline.edges = Edges(app[cdpd_web.INGEST], app[cdpd_web.ADMIN], metrics)
                        metrics.attach(app[cdpd_web.INGEST], pipeline.delivery, pipeline.warehouses)
                        yield Running(
                            url=url,
                            app=app,
                            writer=writer,
                            consumers=pipeline,
                            restarts=restarts,
                            admin_url=admin_url,
                            regulations=regulations,
                            identity=identity,
                            engage=engage,
                        )
                finally:
                    budget.start()
                    regulations_stop.set()  # the target in hand is finished and recorded
                    regulations.wake()
                    await regulations_task
                    # The drain, in order: a warehouse sync commits the batch it is in while
                    # lanes finish their attempts (unfinished claims go back)...
                    pipeline.signal_warehouses_stop()
                    await pipeline.stop_delivery(budget.delivery_drain_s())
                    flow_stop.set()  # ... the console counts what delivery did last ...
                    await flow_task
                    governance_stop.set()  # ... the last schema counts are written ...
                    await governance_task
                    await pipeline.stop_warehouses(budget.warehouses_s())
                    engage_stop.set()  # ... Engage commits what it is applying ...
                    if engage is not None and engage_task is not None:
                        engage.wake.set()
                        await engage_task
                    identity_stop.set()  # ... identity commits the batch it is resolving ...
                    if identity_task is not None:
                        await identity_task
                    writer.close()  # ... and the writer commits what is still pending.
                    await writer_task
                    space_stop.set()


@asynccontextmanager
async def _identity(
    config: Config, writer: OutboxWriter, suppressed: Callable[[str], frozenset[str]]
) -> AsyncIterator[IdentityStage | None]:
    """The identity stage when `[identity]` is configured, woken by every commit; the users
    suppressed for a source get no profile."""
    if config.identity is None:
        yield None
        return
    async with identity_stage.opened(
        config, config.storage.outbox_path, writer.transact, lambda: writer.last_seq, suppressed
    ) as identity:
        writer.on_messages(identity.consumer.new_messages)
        yield identity


@asynccontextmanager
async def _engage(
    config: Config, identity: IdentityStage | None, writer: OutboxWriter, clock: Clock
) -> AsyncIterator[EngageStage | None]:
    """The Engage stage when there are profiles (`[identity]`) and definitions to keep."""
    if identity is None or not (config.audiences or config.computed_traits):
        yield None
        return
    async with engage_stage.opened(
        config, identity, writer, clock, config.storage.outbox_path
    ) as engage:
        yield engage


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
    config: Config,
    stages: cdpd_web.Stages,
    budget: ShutdownBudget,
    sock: socket.socket,
    admin_sock: socket.socket | None = None,
) -> AsyncIterator[tuple[str, web.Application, str | None]]:
    drain = cdpd_web.Drain()
    app = cdpd_web.build(config, stages, drain)
    admin = (app[cdpd_web.ADMIN_APP], admin_sock) if admin_sock is not None else None
    async with listeners.serving(config.server, app, drain, budget, sock, admin) as (
        url,
        admin_url,
    ):
        yield url, app, admin_url


async def serve(
    config: Config, log_writer: LineWriter | None = None, config_path: str | None = None
) -> int:
    """Run until SIGTERM or SIGINT; SIGHUP reads `config_path` again and reloads the whole
    configuration. Returns the process exit code."""
    notifier = Notifier()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with _serving_backend(config, config_path) as server:
        _log_start(server)
        notifier.ready()
        supervised = functools.partial(supervise, clock=SystemClock(), restarts=server.restarts)
        async with asyncio.TaskGroup() as tasks:
            if config_path is not None:
                reload = reload_from(functools.partial(load_config, config_path), server.reload)
                loop.add_signal_handler(
                    signal.SIGHUP, lambda: tasks.create_task(_reload(reload, notifier))
                )
            if notifier.watchdog_interval_s:
                # Pinged from the event loop, so a stuck loop gets the service restarted.
                ping = functools.partial(_every, notifier.watchdog_interval_s, notifier.watchdog)
                tasks.create_task(supervised("watchdog", ping, stop), name="watchdog")
            if log_writer is not None:
                flush = functools.partial(_every, logs.FLUSH_INTERVAL_S, log_writer.flush)
                tasks.create_task(supervised("log-flush", flush, stop), name="log-flush")
            await stop.wait()
            loop.remove_signal_handler(signal.SIGHUP)
        log.info("stopping")
        notifier.stopping()
    log.info("stopped")
    if log_writer is not None:
        log_writer.flush()
    return 0


@asynccontextmanager
async def _serving_backend(
    config: Config, config_path: str | None
) -> AsyncIterator[Running | Node]:
    """The SQLite backend's daemon, or a node of the JetStream backend (cdpd/cluster/node.py)."""
    if config.storage.backend == "jetstream":
        async with running_node(config, config_path=config_path) as node:
            yield node
        return
    async with running(config, config_path=config_path) as server:
        yield server


async def _reload(reload: Callable[[], Awaitable[None]], notifier: Notifier) -> None:
    notifier.reloading()
    try:
        await reload()
    finally:
        notifier.ready()


def _log_start(server: Running | Node) -> None:
    """The start-up line: what this daemon is and serves."""
    config = server.config
    admin_on = config.admin.resolved_token() is not None
    jetstream = config.storage.backend == "jetstream"
    log.info(
        "listening",
        url=server.url,
        version=__version__,
        backend=config.storage.backend,
        outbox=", ".join(config.storage.jetstream.servers)
        if jetstream
        else str(config.storage.outbox_path),
        sources=[s.name for s in config.sources if s.enabled],
        destinations=[d.name for d in config.destinations if d.enabled],
        warehouses=[w.name for w in config.warehouses],
        admin_api="on" if admin_on else "off",
        admin_url=server.admin_url or server.url,
    )
    if not admin_on:
        log.warning(
            "admin_api_off",
            reason="no admin token: set [admin] token_env (or a systemd credential)",
        )


async def _every(interval_s: float, action: Callable[[], None], stop: asyncio.Event) -> None:
    """Call `action` now and every `interval_s` until `stop` is set."""
    while not stop.is_set():
        action()
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


def run(
    config: Config, log_writer: LineWriter | None = None, config_path: str | None = None
) -> int:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(config, log_writer, config_path))
