"""The privacy portal on a JetStream node: every node keeps the same inventory in force, adds
what its ingest detects to the shared inbox, and answers the privacy endpoints.

* **The inventory in force.** A watch of `CDPD_inventory` feeds the portal's `Inventory`,
  which ingest (source controls), delivery (destination controls) and warehouse loads read.
  The whole inventory is read before the node's other stages start, so nothing is sent or
  loaded before it is in force. A change reaches every node as the watch pushes it (a few
  milliseconds); should a watch stall unnoticed (a server restarting under it), a check every
  `CHECK_EVERY_S` finds the view behind what the bucket held at the previous check and reads
  it whole again. So a classification stored at T is applied by every connected node to what
  it sends or loads from T + 2 x `CHECK_EVERY_S` on (plus a read), and usually at once.
* **The inbox.** Detection is ingest's (`cdpd.privacy.inbox`); every `FLUSH_EVERY_S` the
  fields seen are merged into `CDPD_inbox` by the node that saw them: a new field or a new
  suggestion at once, a field only seen again at most every `REFRESH_EVERY_S` (its last-seen
  time is that coarse on this backend), and what is left when the node stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import nats.errors
import structlog
from aiohttp import web
from nats.js.kv import KeyValue

from cdpd.clock import Clock
from cdpd.cluster.node_web import cluster_answers, require_admin
from cdpd.cluster.privacy_store import (
    ClusterPrivacy,
    decode_classification,
    inbox_key,
    stop_watching,
)
from cdpd.privacy.controls import Inventory
from cdpd.privacy.endpoints import PrivacyEndpoints
from cdpd.privacy.portal import Portal
from cdpd.privacy.store import InboxField, InventoryField

if TYPE_CHECKING:
    from cdpd.cluster.node import NodeParts

log = structlog.get_logger("cdpd.cluster")

CHECK_EVERY_S = 1.0
FLUSH_EVERY_S = 1.0
REFRESH_EVERY_S = 60.0
LAST_FLUSH_S = 5.0  # at shutdown: what the inbox has not got by then is not written
# How long a classify request waits for this node's watch to bring the change back.
APPLIED_WAIT_S = 2.0


class InventoryView:
    """The node's copy of `CDPD_inventory`, kept in the portal's `Inventory`."""

    def __init__(self, privacy: ClusterPrivacy, inventory: Inventory, clock: Clock) -> None:
        self._privacy = privacy
        self._kv = privacy.inventory_kv
        self.inventory = inventory
        self._clock = clock
        # key -> (revision, field) of what the view holds; a watch entry no newer is skipped.
        self._known: dict[str, tuple[int, str | None]] = {}
        self.revision = 0  # the bucket's sequence the view has reached
        self.reloads = 0
        self.watcher: KeyValue.KeyWatcher | None = None  # the watch followed now
        self._advanced = asyncio.Condition()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the bucket until `stop`; a watch that fell behind is replaced. Each watch
        begins before the whole inventory is read again, so no change falls between them."""
        while not stop.is_set():
            self.watcher = watcher = await self._kv.watchall()
            try:
                await self.load()
                await self._follow(watcher, stop)
            finally:
                await stop_watching(watcher)

    async def load(self) -> None:
        """Read the whole inventory and put it in force (before the stages that apply it
        start, and again whenever a watch begins)."""
        floor = await self._last_seq()  # the read below holds every change up to it
        known: dict[str, tuple[int, str | None]] = {}
        classes: dict[str, str] = {}
        for entry in await self._privacy.latest_classifications():
            found = decode_classification(entry.value) if entry.value else None
            known[entry.key] = (entry.revision, found.field if found else None)
            if found is not None and found.class_ is not None:
                classes[found.field] = found.class_
            floor = max(floor, entry.revision)
        self._known = known
        if self.inventory.replace(classes):
            log.info("privacy_inventory_read", fields=len(classes))
        self.reloads += 1
        await self._advance(floor)

    async def applied(self, revision: int, timeout_s: float = APPLIED_WAIT_S) -> bool:
        """Wait until the view has reached `revision`; False when it did not in time."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s), self._advanced:
                await self._advanced.wait_for(lambda: self.revision >= revision)
                return True
        return False

    async def _follow(self, watcher: KeyValue.KeyWatcher, stop: asyncio.Event) -> None:
        """Apply each change the watch pushes; return when the view is behind what the
        bucket held at the previous check (the watch stalled)."""
        behind_at_check = await self._last_seq()
        next_check_ms = self._clock.now_ms() + int(CHECK_EVERY_S * 1000)
        while not stop.is_set():
            until_check_s = max(0.001, (next_check_ms - self._clock.now_ms()) / 1000)
            try:
                entry = await watcher.updates(timeout=until_check_s)  # type: ignore[no-untyped-call]
            except nats.errors.TimeoutError:  # nothing changed meanwhile
                entry = None
            if entry is not None:
                self._change(entry)
                await self._advance(entry.revision or 0)
            if self._clock.now_ms() < next_check_ms:
                continue
            last_seq = await self._last_seq()
            if self.revision < behind_at_check:
                log.warning("privacy_inventory_watch_behind", revision=self.revision)
                return  # read it whole again
            behind_at_check = last_seq
            next_check_ms = self._clock.now_ms() + int(CHECK_EVERY_S * 1000)

    def _change(self, entry: KeyValue.Entry) -> None:
        revision = entry.revision or 0
        known = self._known.get(entry.key)
        if known is not None and revision <= known[0]:
            return  # the view holds it, or newer
        found = decode_classification(entry.value) if entry.value else None
        field = found.field if found is not None else known[1] if known is not None else None
        self._known[entry.key] = (revision, field)
        if field is not None:  # no record: deleted by hand, the field is not classified
            self.inventory.classify(field, found.class_ if found is not None else None)

    async def _advance(self, revision: int) -> None:
        if revision > self.revision:
            async with self._advanced:
                self.revision = revision
                self._advanced.notify_all()

    async def _last_seq(self) -> int:
        return int((await self._kv.status()).stream_info.state.last_seq)


class ClusterPortal:
    """The endpoints' store on this backend: the buckets, with a classification in force on
    the answering node when the answer is sent."""

    def __init__(self, privacy: ClusterPrivacy, view: InventoryView) -> None:
        self._privacy = privacy
        self._view = view

    async def inbox(
        self, *, source: str | None, include_classified: bool, since: str | None
    ) -> list[InboxField]:
        with cluster_answers():
            return await self._privacy.inbox(
                source=source, include_classified=include_classified, since=since
            )

    async def inventory(self) -> list[InventoryField]:
        with cluster_answers():
            return await self._privacy.inventory()

    async def classify(self, field: str, class_: str | None, at: str, by: str) -> None:
        with cluster_answers():
            revision = await self._privacy.classify(field, class_, at, by)
        if not await self._view.applied(revision):
            log.warning("privacy_classification_not_yet_applied", field=field, revision=revision)


class InboxFolder:
    """Merges the fields this node's ingest saw into `CDPD_inbox` (see the module's doc)."""

    def __init__(self, privacy: ClusterPrivacy, portal: Portal, clock: Clock) -> None:
        self._privacy = privacy
        self._portal = portal
        self._clock = clock
        self._pending: dict[str, InboxField] = {}
        self._written: dict[str, tuple[InboxField, int]] = {}  # key -> (row, written at ms)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`; then what is pending, unless the cluster keeps the node waiting."""
        while not await self._clock.wait(stop, FLUSH_EVERY_S):
            await self.flush()
        try:
            async with asyncio.timeout(LAST_FLUSH_S):
                await self.flush(everything=True)
        except TimeoutError:
            log.warning("privacy_inbox_not_written", rows=len(self._pending))

    async def flush(self, *, everything: bool = False) -> int:
        """Write the rows due (all pending ones with `everything`); returns how many."""
        for taken in self._portal.take_inbox_rows():
            seen = InboxField(*taken)  # type: ignore[arg-type]
            key = inbox_key(seen.source, seen.field)
            self._pending[key] = seen
        now_ms = self._clock.now_ms()
        due = {
            key: row
            for key, row in self._pending.items()
            if everything or self._due(key, row, now_ms)
        }
        if not due:
            return 0
        failed = {
            inbox_key(r.source, r.field) for r in await self._privacy.fold_inbox(due.values())
        }
        for key, row in due.items():
            if key not in failed:
                del self._pending[key]
                self._written[key] = (row, now_ms)
        if failed:
            log.warning("privacy_inbox_write_failed", rows=len(failed))
        return len(due) - len(failed)

    def _due(self, key: str, row: InboxField, now_ms: int) -> bool:
        """New, changed beyond its last-seen time, or last written long enough ago."""
        written = self._written.get(key)
        if written is None:
            return True
        before, at_ms = written
        if (row.suggested_class, row.matcher, row.sample) != (
            before.suggested_class,
            before.matcher,
            before.sample,
        ):
            return True
        return now_ms - at_ms >= REFRESH_EVERY_S * 1000


class PrivacyStage:
    """The stage's value: the view (for tests and the bound) and the endpoints."""

    def __init__(self, view: InventoryView, folder: InboxFolder, endpoints: PrivacyEndpoints):
        self.view = view
        self.folder = folder
        self._endpoints = endpoints

    def routes(self) -> list[web.RouteDef]:
        return self._endpoints.routes()


@asynccontextmanager
async def privacy_stage(parts: NodeParts) -> AsyncIterator[PrivacyStage]:
    """Read the inventory, then follow it and fold the inbox until the node stops."""
    privacy = await ClusterPrivacy.of(parts.js, parts.layout)
    view = InventoryView(privacy, parts.privacy.inventory, parts.clock)
    await view.load()
    folder = InboxFolder(privacy, parts.privacy, parts.clock)
    token = parts.config.admin.resolved_token()

    async def authorize(request: web.Request) -> None:
        require_admin(token, request)

    parts.privacy_store = ClusterPortal(privacy, view)
    endpoints = PrivacyEndpoints(parts.privacy_store, authorize)
    stop = asyncio.Event()
    following = parts.tasks.create_task(
        parts.supervised("privacy-inventory", view.run, stop), name="privacy-inventory"
    )
    folding = parts.tasks.create_task(
        parts.supervised("privacy-inbox", folder.run, stop), name="privacy-inbox"
    )
    try:
        yield PrivacyStage(view, folder, endpoints)
    finally:
        stop.set()
        following.cancel()  # holds nothing to write; the inbox's last rows are
        await asyncio.gather(following, folding, return_exceptions=True)
