"""Profiles Sync on the JetStream backend: the holder of the profiles lease, where the identity
store is live, loads its changes into every warehouse every `interval_s` of that warehouse,
with the same code and the same position (in the warehouse) as on one node. The warehouse's
own load lock keeps it from interleaving with the node loading the warehouse's events.

A change number (cdpd/identity/changes.py) is taken per write transaction, so numbers depend
on how the stream was cut into batches, which differs between two holders. Each holder
therefore numbers its changes from `term << TERM_SHIFT` on: every change a newer holder
writes is above every number an older one gave, so a warehouse's position from an older
holder never hides a newer holder's rows (what the newer one wrote again is loaded again,
which changes nothing).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import structlog

from cdpd.clock import Clock
from cdpd.config import Config
from cdpd.identity import profiles_sync, store
from cdpd.warehouse.loader import SYNC_ERRORS
from cdpd.warehouse.sinks import open_sink

log = structlog.get_logger("cdpd.identity")

TERM_SHIFT = 32  # 4 billion write transactions per holder before numbers could meet


def number_changes_from(identity_file: Path, term: int) -> None:
    """Move the store's change counter (of a new store too) to at least `term << TERM_SHIFT`,
    before the stage opens it."""
    with store.connect(identity_file) as conn:
        conn.execute(
            "UPDATE position SET seq = max(seq, ?) WHERE name = 'changes'", (term << TERM_SHIFT,)
        )


async def sync_while_running(config: Config, clock: Clock, stop: asyncio.Event) -> None:
    """Each warehouse's Profiles Sync, every `interval_s` of it, until `stop`."""
    due_ms = {warehouse.name: 0 for warehouse in config.warehouses}
    while not stop.is_set():
        for warehouse in config.warehouses:
            if clock.now_ms() < due_ms[warehouse.name]:
                continue
            try:
                async with open_sink(config, warehouse) as sink:
                    rows = await profiles_sync.load(config, sink, warehouse.max_columns)
            except (*SYNC_ERRORS, sqlite3.Error, TimeoutError) as exc:
                log.error("profiles_sync_failed", warehouse=warehouse.name, error=repr(exc))
                rows = {}
            if rows:
                log.info("profiles_synced", warehouse=warehouse.name, rows=rows)
            due_ms[warehouse.name] = clock.now_ms() + round(warehouse.interval_s * 1000)
        next_ms = min(due_ms.values())
        await clock.wait(stop, max(0.05, (next_ms - clock.now_ms()) / 1000))
