"""The analytics.js / mobile settings document (`GET /v1/projects/{writeKey}/settings`).

It makes an unchanged analytics.js (or a mobile SDK with its settings host pointed here) send every
event to this cdpd: the write key as `apiKey`, this daemon as `apiHost`, telemetry off, and no
other integration (more keys would make analytics.js load device-mode code from a CDN).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit


def settings_document(
    write_key: str, base_url: str, track_plan: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`track_plan` is the source's `plan.track` map (governance/browser.py); analytics.js
    keeps events it marks `enabled: false` from device-mode integrations."""
    parts = urlsplit(base_url)
    api_host = f"{parts.netloc}{parts.path.rstrip('/')}/v1"
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": api_host,
                "protocol": parts.scheme,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
                "versionSettings": {"version": "4.4.7", "componentTypes": ["browser"]},
            }
        },
        "plan": {
            "track": track_plan or {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "metrics": {"sampleRate": 0, "host": api_host},
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
        "edgeFunction": {},
    }
