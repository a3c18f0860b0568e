"""The browser side of governance: the `plan.track` map of the analytics.js settings document.

analytics-next's schema filter reads `plan.track[<event>].enabled` (else `__default.enabled`)
and keeps a disabled event from device-mode integrations while still sending it here; so
blocked events, and unplanned ones where the source blocks them, are published disabled.
"""

from __future__ import annotations

from typing import Any

from cdpd.config import Source
from cdpd.governance.plans import Plan


def track_plan(source: Source, plan: Plan | None) -> dict[str, Any]:
    blocks_unplanned = plan is not None and not source.protocols.track.allowUnplannedEvents
    track: dict[str, Any] = {"__default": {"enabled": not blocks_unplanned, "integrations": {}}}
    if plan is not None:
        for event in plan.track_events():
            track[event] = {"enabled": True, "integrations": {}}
    for event in source.blocked_events:
        track[event] = {"enabled": False, "integrations": {}}
    return track
