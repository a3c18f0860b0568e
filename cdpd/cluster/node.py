"""One cdpd node of the JetStream backend: every node runs the same config, takes Tracking API
requests behind a load balancer and writes them to the shared streams.

Start-up: the data folder's lock (node-local state), the listening sockets, the connection to
the cluster (bounded; one line when it cannot be reached), the streams and buckets made sure
of, then HTTP. Shutdown is an ordered drain: stop accepting connections, let the requests in
flight get their acks, refuse new appends, stop the stages, and close the connection last
(draining what the client still holds).

The stages that read the streams plug in at `_stages`: each is an async context given the
node's parts (connection, layout, task group, supervisor) and held while the node serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import structlog
from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext

from cdpd import listeners, logs, startup
from cdpd import web as cdpd_web
from cdpd.clock import Clock, SystemClock
from cdpd.cluster import confd_sync, connect, ported
from cdpd.cluster.confd_sync import ConfdSync
from cdpd.cluster.connect import ClusterUnreachable
from cdpd.cluster.flow_counts import FlowRecorder
from cdpd.cluster.ingest import JetStreamAppender
from cdpd.cluster.layout import Layout
from cdpd.cluster.node_web import NodeEndpoints
from cdpd.cluster.publish import Publisher
from cdpd.cluster.reloading import NodeConfig
from cdpd.config import Config
from cdpd.destinations.settings import FileDestination
from cdpd.governance.stage import Governance
from cdpd.ingest import bundle
from cdpd.ingest.routes import Ingest
from cdpd.metrics import Metrics
from cdpd.outbox.lock import data_dir_lock
from cdpd.privacy.endpoints import PortalStore
from cdpd.privacy.portal import Portal
from cdpd.shutdown import ShutdownBudget
from cdpd.supervise import Restarts, supervise

if TYPE_CHECKING:
    from cdpd.cluster.file_erasure import FileErasure
    from cdpd.cluster.profile_reads import NodeProfiles
    from cdpd.cluster.store import JetStreamDeliveryStore

log = structlog.get_logger("cdpd.cluster")


@dataclass
class NodeParts:
    """What a stage of a node is built from."""

    config: Config
    client: Client
    js: JetStreamContext
    layout: Layout
    tasks: asyncio.TaskGroup
    clock: Clock
    restarts: Restarts
    metrics: Metrics
    node_name: str
    governance: Governance  # its suppressions are fed from the cluster
    appender: JetStreamAppender
    flow: FlowRecorder  # the node's counts per interval (what it stores, what its lanes do)
    in_force: NodeConfig  # the config in force (a reload replaces it)
    closing: Callable[[], bool] = lambda: False  # true once the node drains its requests
    # conf.d kept as the cluster's CDPD_confd bucket says (None: no config file or no include).
    confd: ConfdSync | None = None
    config_path: Path | None = None
    # The inbox and inventory as the privacy stage (entered first) serves them.
    privacy_store: PortalStore | None = None
    # What the Profile API reads, once the profiles stage (entered before the console) started.
    profiles: NodeProfiles | None = None
    # The erasure of regulations' users from this node's files, once its stage (entered before
    # delivery, which hands it the file senders) started.
    file_erasure: FileErasure | None = None

    @property
    def privacy(self) -> Portal:
        """Ingest's privacy controls: their inventory is the one every stage applies."""
        return self.governance.privacy

    @functools.cached_property
    def delivery_store(self) -> JetStreamDeliveryStore:
        """The node's one delivery store: its lanes record through it, the console reads and
        replays through it."""
        from cdpd.cluster.delivery import delivery_store

        return delivery_store(self.config, self.js, self.clock)

    def portal(self) -> PortalStore:
        if self.privacy_store is None:
            raise RuntimeError("the privacy stage has not started")
        return self.privacy_store

    def supervised(
        self, name: str, run: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event
    ) -> Coroutine[Any, Any, None]:
        """`run` under the node's supervisor (restarted with backoff on an unexpected error)."""
        return supervise(name, run, stop, clock=self.clock, restarts=self.restarts)


# A stage: entered after the streams are made sure of, exited (in reverse) after HTTP drained.
Stage = Callable[[NodeParts], AbstractAsyncContextManager[object]]


@runtime_checkable
class ServesRoutes(Protocol):
    """A stage whose entered value has operator endpoints (admin token'd, like /admin/cluster)."""

    def routes(self) -> list[web.RouteDef]: ...


@runtime_checkable
class ServesPublicRoutes(Protocol):
    """A stage whose entered value has endpoints beside the Tracking API (the Profile API)."""

    def public_routes(self) -> list[web.RouteDef]: ...


@runtime_checkable
class HasMetrics(Protocol):
    """A stage whose metrics are read from the cluster before each scrape of /metrics."""

    async def refresh_metrics(self) -> None: ...


@dataclass(frozen=True)
class Node:
    """A serving node: where it listens and what it holds, for the CLI and for tests."""

    url: str
    app: web.Application
    config: Config
    appender: JetStreamAppender
    client: Client
    layout: Layout
    restarts: Restarts
    in_force: NodeConfig
    admin_url: str | None = None
    stages: dict[str, object] = field(default_factory=dict)
    confd: ConfdSync | None = None

    @property
    def ingest(self) -> Ingest:
        return self.app[cdpd_web.INGEST]

    async def reload(self, new_config: Config) -> list[str]:
        """What a reload puts in force on this backend (`cdpd.cluster.reloading`)."""
        return await self.in_force.reload(new_config)


@asynccontextmanager
async def running_node(
    config: Config,
    *,
    clock: Clock | None = None,
    stages: Sequence[tuple[str, Stage]] = (),
    node_name: str | None = None,
    config_path: str | os.PathLike[str] | None = None,
) -> AsyncIterator[Node]:
    """Serve `config` on the JetStream backend until the block exits. Raises StartupError (one
    line) when the data folder is held, a port cannot be bound or the cluster is unreachable.
    With `config_path` (the file `config` was loaded from) and its `include`, conf.d follows
    the cluster's CDPD_confd bucket, brought up to date before anything is built."""
    for note in ported.not_served(config):
        log.info("not_served", note=note)
    clock = clock or SystemClock()
    restarts = Restarts()
    jetstream = config.storage.jetstream
    layout = Layout.of(jetstream)
    path = Path(config_path) if config_path is not None else None
    name = node_name or f"{socket.gethostname()}:{os.getpid()}"
    with (
        data_dir_lock(Path(config.storage.data_dir)),
        contextlib.closing(startup.bind(config.server)) as sock,
        listeners.admin_socket(config) as admin_sock,
    ):
        async with open_cluster(config, layout, name) as (client, js, publisher):
            config, confd = await confd_sync.following(js, layout, path, config)
            governance = Governance(config)
            in_force = NodeConfig(config, governance)
            appender = JetStreamAppender.of(config, client, publisher, layout)
            metrics = Metrics(restarts)
            budget = ShutdownBudget(
                config.server.shutdown_timeout_s, delivery_drain_s=config.delivery.drain_timeout_s
            )
            drain = cdpd_web.Drain()
            flow = FlowRecorder(js, layout, name, clock)
            appender.accepted = flow.accepted
            async with asyncio.TaskGroup() as tasks, contextlib.AsyncExitStack() as held:
                parts = NodeParts(
                    config, client, js, layout, tasks, clock, restarts, metrics, name,
                    governance, appender, flow, in_force,
                    closing=lambda: drain.closing, confd=confd, config_path=path,
                )  # fmt: skip
                # Its last flush once every stage (delivery's lanes last) has stopped.
                flow_stop = asyncio.Event()
                held.callback(flow_stop.set)
                tasks.create_task(
                    parts.supervised("flow_counts", flow.run, flow_stop), name="flow-counts"
                )
                entered = {
                    stage_name: await held.enter_async_context(stage(parts))
                    for stage_name, stage in [*_built_in_stages(config, confd), *stages]
                }
                endpoints = NodeEndpoints(config, js, layout, appender, metrics, client)
                endpoints.stage_routes = [
                    route
                    for value in entered.values()
                    if isinstance(value, ServesRoutes)
                    for route in value.routes()
                ]
                endpoints.public_routes = [
                    route
                    for value in entered.values()
                    if isinstance(value, ServesPublicRoutes)
                    for route in value.public_routes()
                ]
                endpoints.before_render = [
                    value.refresh_metrics
                    for value in entered.values()
                    if isinstance(value, HasMetrics)
                ]
                try:
                    async with _serving(
                        in_force, appender, endpoints, drain, budget, sock, admin_sock
                    ) as (url, app, admin_url):
                        yield Node(
                            url=url,
                            app=app,
                            config=config,
                            appender=appender,
                            client=client,
                            layout=layout,
                            restarts=restarts,
                            in_force=in_force,
                            admin_url=admin_url,
                            stages=entered,
                            confd=confd,
                        )
                finally:
                    budget.start()
                    appender.close()  # requests still in flight get their acks
                    await appender.drained(budget.requests_s())


def _built_in_stages(config: Config, confd: ConfdSync | None) -> list[tuple[str, Stage]]:
    """The stages this module knows (exited in reverse: delivery drains first). Privacy comes
    first: the inventory is in force before anything is sent or loaded. conf.d's follow comes
    before it: a change stored meanwhile is not missed."""
    from cdpd.cluster.console import console_stage
    from cdpd.cluster.delivery_stage import delivery_stage
    from cdpd.cluster.file_erasure import file_erasure_stage
    from cdpd.cluster.privacy_stage import privacy_stage
    from cdpd.cluster.profiles import profiles_stage
    from cdpd.cluster.regulations_stage import regulations_stage
    from cdpd.cluster.warehouse import warehouses_stage

    stages: list[tuple[str, Stage]] = [("confd", confd_sync.confd_stage)] if confd else []
    stages += [
        ("privacy", privacy_stage),
        ("regulations", regulations_stage),
    ]
    if config.identity is not None:
        stages.append(("profiles", profiles_stage))
    if config.console.enabled:
        stages.append(("console", console_stage))  # reads the profiles stage's NodeProfiles
    if config.warehouses:
        stages.append(("warehouses", warehouses_stage))
    if any(isinstance(d, FileDestination) for d in config.destinations):
        stages.append(("file_erasure", file_erasure_stage))  # before a lane writes
    if any(d.enabled for d in config.destinations):
        stages.append(("delivery", delivery_stage))
    return stages


@asynccontextmanager
async def open_cluster(
    config: Config, layout: Layout, node_name: str
) -> AsyncIterator[tuple[Client, JetStreamContext, Publisher]]:
    """A connection to the cluster with the streams and buckets in place and a publisher
    started; StartupError (one line) when the cluster cannot be reached or disagrees."""
    jetstream = config.storage.jetstream
    try:
        async with connect.connected(jetstream, name=f"cdpd {node_name}") as client:
            js = client.jetstream(timeout=jetstream.connect_timeout_s)
            await connect.ensure(js, jetstream, layout)
            if config.storage.dedup_window_s > 0:
                await connect.ensure_dedup(js, jetstream, layout, config.storage.dedup_window_s)
            publisher = Publisher(client)
            await publisher.start()
            yield client, js, publisher
    except ClusterUnreachable as exc:
        raise startup.StartupError(str(exc)) from None


@asynccontextmanager
async def _serving(
    in_force: NodeConfig,
    appender: JetStreamAppender,
    endpoints: NodeEndpoints,
    drain: cdpd_web.Drain,
    budget: ShutdownBudget,
    sock: socket.socket,
    admin_sock: socket.socket | None,
) -> AsyncIterator[tuple[str, web.Application, str | None]]:
    config = in_force.config
    app, admin_app = _applications(config, appender, in_force.governance, endpoints, drain)
    in_force.ingest = app[cdpd_web.INGEST]
    admin = (admin_app, admin_sock) if admin_sock is not None and admin_app is not None else None
    async with listeners.serving(config.server, app, drain, budget, sock, admin) as (
        url,
        admin_url,
    ):
        yield url, app, admin_url


def _applications(
    config: Config,
    appender: JetStreamAppender,
    governance: Governance,
    endpoints: NodeEndpoints,
    drain: cdpd_web.Drain,
) -> tuple[web.Application, web.Application | None]:
    """The public application and, with `[admin] listen`, the operator's one."""
    ingest = Ingest(config, appender, governance)
    endpoints.metrics.attach_ingest(ingest)
    access = logs.access_log(config.logging.level) if config.logging.access_log else None
    wrap = cdpd_web.RequestWrapper(
        drain,
        access,
        errors_only=config.logging.access_log == "errors",
        answers=endpoints.metrics.answers,
    )
    health = web.get("/health", functools.partial(endpoints.health, drain))
    public = [
        *ingest.routes(),
        *bundle.routes(ingest.known_write_key),
        health,
        *endpoints.public_routes,
    ]
    operator = endpoints.routes()
    if config.admin.listen is None:
        public += operator
    app = cdpd_web.application(config, public, wrap)
    app[cdpd_web.INGEST] = ingest
    app[cdpd_web.DRAIN] = drain
    if config.admin.listen is None:
        return app, None
    admin_app = cdpd_web.application(config, [*operator, health], wrap)
    admin_app[cdpd_web.DRAIN] = drain
    return app, admin_app
