"""The config in force on a JetStream node and its live reload (SIGHUP, and the console's
changes arriving through the `CDPD_confd` bucket, `cdpd.cluster.confd_sync`).

A reload here puts in force what ingest and the console read: sources and write keys, tracking
plans, transformations and blocked events (governance's chains, built again), and workspaces.
Everything else (destinations, delivery, warehouses, privacy, identity, Engage, admin, console,
server, storage, logging) is built once when the node starts, by stages that hold consumers and
leases in the cluster: a reload that changes it logs `config_reload_needs_restart` with the
section and keeps the node's; a restart of the node puts it in force. A config whose plans do
not load is refused whole (ConfigError), as on the SQLite backend.
"""

from __future__ import annotations

import asyncio

import msgspec
import structlog

from cdpd.config import Config, Workspace
from cdpd.governance import plans as plan_files
from cdpd.governance.stage import Governance, Prepared, build_chains
from cdpd.ingest.routes import Ingest

log = structlog.get_logger("cdpd.cluster")

# What a reload on this backend puts in force; `include` only names where conf.d is.
APPLIED_SECTIONS = ("sources", "tracking_plans", "transformations", "workspaces", "include")


class NodeConfig:
    """The config in force on this node; ingest is attached once HTTP is built."""

    def __init__(self, config: Config, governance: Governance) -> None:
        self.config = config
        self.governance = governance
        self.ingest: Ingest | None = None
        self.reloads = 0
        self._lock = asyncio.Lock()

    def check(self, new_config: Config) -> tuple[Config, Prepared]:
        """What putting `new_config` in force would put in force, built without changing
        anything; ConfigError (a plan that does not load) when it cannot be."""
        old = self.config
        kept = {
            section: getattr(old, section)
            for section in old.__struct_fields__
            if section not in APPLIED_SECTIONS
        }
        config = msgspec.structs.replace(new_config, **kept)
        config = msgspec.structs.replace(config, workspaces=_served(config))
        plans = plan_files.load_all(config.tracking_plans)
        privacy = self.governance.privacy  # the stages hold it: [privacy] waits for a restart
        return config, Prepared(plans, build_chains(config, plans, privacy), privacy)

    async def reload(self, new_config: Config) -> list[str]:
        """Put `new_config` in force (see the module's docstring); the sections that changed.
        Raises ConfigError, and keeps the config in force, when it cannot be."""
        async with self._lock:
            old = self.config
            config, prepared = self.check(new_config)
            for section in new_config.__struct_fields__:
                if section in APPLIED_SECTIONS:
                    continue
                if getattr(new_config, section) != getattr(old, section):
                    log.warning("config_reload_needs_restart", section=section)
            self.governance.put_in_force(config, prepared)
            self.config = config
            if self.ingest is not None:
                self.ingest.reconfigure(config)
            self.reloads += 1
            return [s for s in APPLIED_SECTIONS if getattr(config, s) != getattr(old, s)]


def _served(config: Config) -> list[Workspace]:
    """The workspaces, each naming only the destinations and warehouses this node runs (one
    added since the node started appears in the console after its restart)."""
    destinations = {d.name for d in config.destinations}
    warehouses = {w.name for w in config.warehouses}
    return [
        msgspec.structs.replace(
            w,
            destinations=[d for d in w.destinations if d in destinations],
            warehouses=[x for x in w.warehouses if x in warehouses],
        )
        for w in config.workspaces
    ]
