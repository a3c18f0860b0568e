"""What the console reads and keeps, as two typed seams, so that its pages are the same on both
storage backends: `ConsoleState` (people, their roles and sessions) and `ConsoleData` (what the
pages show: the live debugger, the figures of a source and of a destination, violations, the
operations a member may ask for, the privacy inbox and inventory, where profiles and Engage's
figures are read). The SQLite backend implements them over its files (`cdpd.console.local`);
the JetStream backend over the cluster's streams and buckets (`cdpd.cluster.console`)."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import msgspec

from cdpd.config import Destination
from cdpd.console.overview import ErrorGroup
from cdpd.console.state import Person, Session
from cdpd.delivery.report import DeadDelivery
from cdpd.governance.store import SchemaField, ViolationSummary
from cdpd.model.rows import OutboxRow
from cdpd.privacy.store import Page

# Pages a backend does not serve, by the module that serves them on the other one.
CONFIG_CHANGES = "changes"


class Unavailable(Exception):
    """An operation this backend does not do (the reason is shown with a 409)."""


class ConsoleState(Protocol):
    """People with their roles per workspace, and their sessions."""

    async def person(self, name: str) -> Person | None: ...

    async def session(self, session_id: str) -> Session | None:
        """The live (unexpired) session with this id."""
        ...

    async def add_session(
        self, session_id: str, name: str, csrf_token: str, ttl_s: int
    ) -> None: ...

    async def end_session(self, session_id: str) -> None: ...

    async def log_signin(self, name: str, address: str | None, *, succeeded: bool) -> None: ...


class People(Protocol):
    """What `cdpd users` changes; each returns False when the person is missing (or, for
    `add_person`, already there)."""

    async def people(self) -> list[Person]: ...

    async def add_person(
        self, name: str, password_hash: str, workspace: str, role: str
    ) -> bool: ...

    async def set_role(self, name: str, workspace: str, role: str) -> bool: ...

    async def set_password(self, name: str, password_hash: str) -> bool:
        """Also ends every session of the person."""
        ...

    async def remove_person(self, name: str) -> bool: ...


class Feed(Protocol):
    """The live debugger's messages of one source, for one watcher."""

    async def next(self, timeout_s: float) -> list[OutboxRow]:
        """The messages sampled since the last call, waiting up to `timeout_s` for one;
        an empty list when none came (the caller sends a heartbeat)."""
        ...


class SourceFigures(msgspec.Struct, frozen=True):
    """A source's page over a window: received by type, rejected and blocked by reason, and
    the chart's series (None where the backend does not keep them)."""

    received: dict[str, int] | None
    rejected: list[tuple[str, int]]
    blocked: list[tuple[str, int]]
    chart: dict[str, Any] | None
    notes: list[str] = []


class DestinationFigures(msgspec.Struct, frozen=True):
    """A destination's Delivery Overview: each step's count over the window (None where the
    backend does not keep it), its backlog, circuit, errors and dead letters."""

    counts: dict[str, int | None]
    filtered: list[tuple[str, int]]
    p95_ms: int | None
    backlog: int
    circuit: str
    errors: list[ErrorGroup]
    dead: list[DeadDelivery]
    dead_total: int
    chart: dict[str, Any] | None
    notes: list[str] = []


class PrivacyTables(msgspec.Struct, frozen=True):
    """A page of the inbox (`InboxField`s) and one of the inventory (`InventoryField`s)."""

    inbox: Page
    inventory: Page


class PrivacyData(Protocol):
    """The Privacy page's reads and its classify button, over the fields some of `sources`
    (a workspace's) sent."""

    async def tables(
        self, sources: list[str], containing: str, *, inbox_from: int, inventory_from: int,
        limit: int,
    ) -> PrivacyTables:  # fmt: skip
        """`limit` rows of the inbox (unclassified, strongest suggestion first) and of the
        inventory (red first) from the given offsets, fields whose name contains `containing`
        (ASCII letters in either case); each page's total counts every matching field."""
        ...

    async def classify(self, field: str, class_: str | None, sources: list[str], by: str) -> bool:
        """Classify `field` (None: take it out of the inventory), in force on this node when
        it returns; False, and nothing changed, when none of `sources` sent it."""
        ...


class AudienceFigures(msgspec.Struct, frozen=True):
    """An audience's or computed trait's page: its size, its entries, exits and new values per
    UTC day (newest first) and its newest changes."""

    size: int
    days: list[dict[str, Any]]
    newest: list[dict[str, Any]]


@dataclass(frozen=True)
class ProfileFiles:
    """Where one page reads profiles and Engage's figures on this node, as its Profile API
    does: the identity store (a read-only connection, message payloads attached; None while
    there is nothing to read yet, `missing` saying why) and Engage's file (None: none here).
    `events_kept` is False where this node does not keep the events history; `notes` say
    where the figures come from."""

    identity: aiosqlite.Connection | None
    engage: Path | None
    events_kept: bool = True
    notes: tuple[str, ...] = ()
    missing: str = "Profiles need [identity] in the configuration."


class ProfileStores(Protocol):
    @property
    def resolved(self) -> bool:
        """Whether this node resolves profiles (`[identity]`): no Profiles page without."""
        ...

    def files(self) -> ProfileFiles:
        """Where a page reads now (taken once per page, so that it reads one state)."""
        ...


class ConsoleData(Protocol):
    @property
    def unavailable(self) -> Mapping[str, str]:
        """The pages this backend does not serve (CONFIG_CHANGES...), each with the reason."""
        ...

    @property
    def privacy(self) -> PrivacyData: ...

    @property
    def profiles(self) -> ProfileStores: ...

    def watch(self, source: str, capacity: int) -> AbstractAsyncContextManager[Feed]: ...

    async def source_figures(self, source: str, window: str) -> SourceFigures: ...

    async def violations(self, source: str, since_ms: int) -> list[ViolationSummary]: ...

    async def schema(self, source: str) -> list[SchemaField] | None:
        """The fields observed, or None where the backend does not observe them."""
        ...

    async def destination_figures(
        self, destination: Destination, upstream: list[str], window: str
    ) -> DestinationFigures: ...

    async def payload(self, message_id: str, sources: list[str]) -> str | None:
        """A stored message by messageId, if it came from one of `sources`."""
        ...

    async def replay_dead(self, destination: Destination) -> int:
        """Queue the destination's dead letters again; how many."""
        ...

    async def retry(self, destination: Destination) -> int:
        """Make waiting retries due now (and close the circuit); how many wait."""
        ...

    async def warehouse_holder(self, warehouse: str) -> str | None:
        """The node that loads the warehouse, where that is a node among several."""
        ...

    async def sync_now(self, warehouse: str) -> str:
        """Sync the warehouse now; what happened, in a few words. Raises Unavailable."""
        ...
