"""Which messages a destination is owed, decided in Python from a JetStream message (its
headers, and its payload only when a rule needs it): exactly what `RoutingRule.where()` decides
in SQL on the SQLite backend, so a destination gets the same messages on either backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from cdpd.cluster.layout import DESTINATION, OWED_TO, names_in
from cdpd.delivery.store import RoutingRule
from cdpd.destinations.actions import Action
from cdpd.mapping import fql
from cdpd.model.rows import OutboxRow

_decoder = msgspec.json.Decoder()
REPLAYED_ELSEWHERE = "replayed for another destination"
NOT_OWED = "not owed since the import"


class Router:
    """`owed(row)`: whether the rule's destination is owed the message."""

    def __init__(self, rule: RoutingRule, actions: Sequence[Action]) -> None:
        self._rule = rule
        self._subscriptions = [action.subscription for action in actions]
        self._names = (rule.destination, rule.catalog_name, "All")

    def owed(self, row: OutboxRow) -> bool:
        return self.reason(row) is None

    def takes(self, headers: dict[str, str], row: OutboxRow) -> bool:
        """Whether the destination takes a message of the stream: one replayed for a
        destination (`Cdpd-Destination`) goes to it alone, whatever the rule; one imported from
        a SQLite outbox (`Cdpd-Owed-To`) only to the destinations still owed it there, by
        the rule; any other message by the rule."""
        return self.refusal(headers, row) is None

    def refusal(self, headers: dict[str, str], row: OutboxRow) -> str | None:
        """Why the destination does not take a message of the stream (None: it takes it): the
        rule's reason (`reason`), or REPLAYED_ELSEWHERE, or NOT_OWED for one imported."""
        target = headers.get(DESTINATION)
        if target is not None:
            return None if target == self._rule.destination else REPLAYED_ELSEWHERE
        owed_to = headers.get(OWED_TO)
        if owed_to is not None and self._rule.destination not in names_in(owed_to):
            return NOT_OWED
        return self.reason(row)

    def reason(self, row: OutboxRow) -> str | None:
        """Why the message is filtered out (the names `RoutingRule.parts` uses), or None."""
        rule = self._rule
        if rule.sources is not None and row.source not in rule.sources:
            return "sources"
        if rule.types is not None and row.type not in rule.types:
            return "filters"
        if row.type == "track" and not _event_passes(row.event, rule):
            return "filters"
        try:
            message = _decoder.decode(row.payload)
        except msgspec.DecodeError:
            message = None
        if not isinstance(message, dict):
            # SQLite's JSON functions find nothing in it: no subscription matches.
            return "subscription"
        if not self._integrations_allow(row.payload, message):
            return "integrations object"
        if not any(fql.matches(node, message) for node in self._subscriptions):
            return "subscription"
        return None

    def _integrations_allow(self, payload: str, message: dict[str, Any]) -> bool:
        """The first of the destination's name, its catalog name and `All` that the
        `integrations` object holds (JSON null counts as absent) decides; `false` (or a 0,
        which SQLite reads as false) disables. As in SQL, a payload without the text `false`
        anywhere is never disabled."""
        if "false" not in payload:
            return True
        integrations = message.get("integrations")
        if not isinstance(integrations, dict):
            return True
        for name in self._names:
            value = integrations.get(name)
            if value is not None:
                return not _sqlite_zero(value)
        return True


def _sqlite_zero(value: Any) -> bool:
    """Whether SQLite's `value ->> path != 0` is false: JSON false, 0 or 0.0."""
    return isinstance(value, (bool, int, float)) and value == 0


def _event_passes(event: str | None, rule: RoutingRule) -> bool:
    # SQL's `event IN (...)` and `event NOT IN (...)` are both unknown for a NULL event.
    if rule.events is not None and (event is None or event not in rule.events):
        return False
    return not (rule.exclude_events and (event is None or event in rule.exclude_events))
