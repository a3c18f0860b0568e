"""How far each warehouse has loaded the outbox, for whatever prunes it.

The position is stored in each warehouse, beside the rows it covers; messages at or below the
lowest position of all configured warehouses are loaded everywhere and can be deleted.
"""

from __future__ import annotations

import structlog

from cdpd.config import Config, Warehouse
from cdpd.warehouse.loader import SYNC_ERRORS, sequence_gap
from cdpd.warehouse.sinks import open_sink

log = structlog.get_logger("cdpd.warehouse")


async def load_position(config: Config, warehouse: Warehouse) -> int:
    """The highest outbox seq loaded into `warehouse` (0 before its first load)."""
    async with open_sink(config, warehouse) as sink:
        return await sink.position()


async def prunable_seq(config: Config) -> int | None:
    """The highest seq every warehouse has loaded; None when no warehouse is configured.
    A warehouse that cannot be reached, or that is ahead of the outbox (its position says
    nothing of the messages stored since), counts as having loaded nothing (0)."""
    if not config.warehouses:
        return None
    positions = []
    for warehouse in config.warehouses:
        try:
            gap = await sequence_gap(config, warehouse)
            positions.append(0 if gap is not None else await load_position(config, warehouse))
        except SYNC_ERRORS as exc:
            log.warning("warehouse_unreachable", warehouse=warehouse.name, error=str(exc))
            positions.append(0)
    return min(positions)
