"""The privacy portal as the daemon runs it: the matchers, a field detector per source, the
live inventory, and the controls built from the config over that inventory."""

from __future__ import annotations

from collections.abc import Callable

import aiosqlite

from cdpd.privacy import store
from cdpd.privacy.controls import (
    BlockedFields,
    Inventory,
    LiveControls,
    PathControls,
    compile_controls,
)
from cdpd.privacy.inbox import FieldDetector
from cdpd.privacy.matchers import Matchers
from cdpd.privacy.settings import PrivacyConfig


class Portal:
    def __init__(self, config: PrivacyConfig) -> None:
        self.config = config
        self.inventory = Inventory()
        self.salt = config.resolved_salt()
        self.matchers = Matchers(config) if config.detect else None
        self._detectors: dict[str, FieldDetector] = {}
        self.fields_removed: dict[str, int] = {}  # per source: messages a control took from

    def with_config(self, config: PrivacyConfig) -> Portal:
        """The portal for a reloaded config: new matchers and controls over the same inventory
        and counts (fields are detected again with the new matchers)."""
        if config == self.config:
            return self
        portal = Portal(config)
        portal.inventory, portal.fields_removed = self.inventory, self.fields_removed
        return portal

    def detector(self, source: str) -> FieldDetector | None:
        """The source's detector; one per source for the daemon's life (a plan reload
        rebuilds the chains but keeps what was seen)."""
        if self.matchers is None:
            return None
        found = self._detectors.get(source)
        if found is None:
            found = self._detectors[source] = FieldDetector(source, self.matchers)
        return found

    def blocked_fields(self, source: str) -> BlockedFields | None:
        controls = self.config.sources.get(source)
        if controls is None or not controls.block:
            return None
        return BlockedFields(self.inventory, controls.block, self.fields_removed, source)

    def destination_controls(self, destination: str) -> LiveControls | None:
        actions = self.config.destinations.get(destination)
        if actions is None:
            return None
        return LiveControls(self.inventory, actions.by_class(), self.salt)

    def fields_seen(self) -> dict[str, int]:
        """Per source, how many field paths detection knows."""
        return {source: d.field_count for source, d in self._detectors.items()}

    def clear_samples(self, shows: Callable[[str], bool]) -> None:
        for detector in self._detectors.values():
            detector.clear_samples(shows)

    def take_inbox_rows(self) -> list[tuple[object, ...]]:
        return [row for detector in self._detectors.values() for row in detector.take_rows()]

    async def load_inventory(self, conn: aiosqlite.Connection) -> bool:
        """Read the inventory again (`cdpd privacy classify` writes it from another process);
        True when it changed."""
        return self.inventory.replace(await store.read_classes(conn))


def warehouse_controls(
    config: PrivacyConfig, warehouse: str, classes: dict[str, str]
) -> PathControls | None:
    """The warehouse's controls over the inventory `classes` (read at the start of a sync)."""
    actions = config.warehouses.get(warehouse)
    if actions is None:
        return None
    controls = compile_controls(classes, actions.by_class(), config.resolved_salt())
    return controls or None
