"""What a sync did and what a warehouse holds: the Structs the CLI prints and the sinks store."""

from __future__ import annotations

from typing import Literal

import msgspec

SyncStatus = Literal["success", "partial", "failure"]


class SyncReport(msgspec.Struct, kw_only=True):
    """One sync: `success` loaded everything up to the outbox's end when it started (or there was
    nothing to load), `partial` committed some batches and then failed, `failure` loaded none."""

    warehouse: str
    status: SyncStatus = "success"
    started_at: str
    finished_at: str | None = None
    first_seq: int | None = None  # the first outbox seq this sync loaded
    position: int | None = None  # the highest seq loaded when it finished
    messages: int = 0
    rows: dict[str, int] = msgspec.field(default_factory=dict)  # "schema.table" -> rows written
    discards: int = 0
    error: str | None = None


class TableRows(msgspec.Struct, frozen=True):
    schema: str
    table: str
    rows: int


class WarehouseStatus(msgspec.Struct, kw_only=True):
    warehouse: str
    type: str
    target: str  # the SQLite file, or the DSN without its password
    position: int = 0
    outbox_last_seq: int | None = None
    profiles_position: int = 0  # the identity store change Profiles Sync has loaded up to
    identity_last_change: int | None = None  # None: no identity store
    recent_syncs: list[SyncReport] = msgspec.field(default_factory=list)  # newest first
    tables: list[TableRows] = msgspec.field(default_factory=list)
    error: str | None = None  # the warehouse could not be read
    # On the JetStream backend, the node holding the warehouse's lease (None: no node now).
    holder: str | msgspec.UnsetType | None = msgspec.UNSET
