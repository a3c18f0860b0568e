"""analytics.js served by cdpd itself: the analytics-next standalone bundle (vendored from the
npm package, see analytics_next/VENDORED.md) at the paths the snippet and the bundle load from,
so a website needs no third-party host. The settings it then fetches are served by
`cdpd.ingest.routes` (`/v1/projects/{writeKey}/settings`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources

from aiohttp import web

from cdpd.ingest.errors import ApiError

BUNDLE_PATH = "/analytics.js/v1/{write_key}/analytics.min.js"
CHUNKS_PATH = "/analytics-next/bundles/{name}"
# The bundle's URL does not change between versions: browsers may keep it a few minutes. The
# chunks' names carry a content hash, so they never change.
BUNDLE_MAX_AGE_S = 300
CHUNK_MAX_AGE_S = 365 * 24 * 3600


@functools.cache
def _files() -> dict[str, bytes]:
    folder = resources.files("cdpd.ingest") / "analytics_next"
    return {item.name: item.read_bytes() for item in folder.iterdir() if item.name.endswith(".js")}


def routes(known_write_key: Callable[[str], bool]) -> list[web.RouteDef]:
    async def bundle(request: web.Request) -> web.Response:
        if not known_write_key(request.match_info["write_key"]):
            raise ApiError(404, "unknown_write_key", "no enabled source has this write key")
        return _script(_files()["standalone.js"], BUNDLE_MAX_AGE_S)

    async def chunk(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = _files().get(name) if ".bundle." in name else None
        if body is None:
            raise ApiError(404, "not_found", f"analytics.js has no file named {name!r}")
        return _script(body, CHUNK_MAX_AGE_S)

    return [
        web.get(BUNDLE_PATH, bundle, allow_head=False),
        web.get(CHUNKS_PATH, chunk, allow_head=False),
    ]


def _script(body: bytes, max_age_s: int) -> web.Response:
    return web.Response(
        body=body,
        content_type="text/javascript",
        charset="utf-8",
        headers={
            "Cache-Control": f"public, max-age={max_age_s}",
            "Access-Control-Allow-Origin": "*",
        },
    )
