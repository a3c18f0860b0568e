"""The console on a real cdpd: sign-in with its rate limit and log, sessions and CSRF, roles,
the isolation of workspaces on every page and endpoint, the debugger stream, the flow counts
of the delivery overview, and workspace API tokens on the admin API."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from cdpd.app import Running, running
from cdpd.config import Config
from tests.console_support import (
    ADMIN_TOKEN,
    PASSWORD,
    add_person,
    add_token,
    signed_in,
    workspaces_toml,
)
from tests.helpers import OTHER_WRITE_KEY, WRITE_KEY, basic_auth
from tests.sink import Sink, status

MakeConfig = Callable[..., Config]
# Every console page, by the names its path takes: a workspace and what belongs to it.
NAMES = {
    "acme": {"source": "website", "destination": "hook_a"},
    "globex": {"source": "backend", "destination": "hook_b"},
}


def console_paths(server: Running, method: str) -> list[str]:
    """Every console route of `method` under a workspace, as registered in the app."""
    paths = []
    for resource in server.app.router.resources():
        info = resource.get_info()
        path = info.get("formatter") or info.get("path") or ""
        if not path.startswith("/console/w/"):
            continue
        if any(route.method == method for route in resource):
            paths.append(path)
    assert paths
    return paths


def fill(path: str, workspace: str, items_of: str) -> str:
    names = NAMES[items_of]
    return (
        path.replace("{workspace}", workspace)
        .replace("{source}", names["source"])
        .replace("{destination}", names["destination"])
        .replace("{warehouse}", "wh")
        .replace("{type}", "webhook")
        .replace("{index}", "0")
        .replace("{key}", "buyers")
    )


async def test_signing_in_opens_the_workspace_and_its_pages(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with Sink() as sink:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "ada", {"acme": "owner"})
        async with running(config) as server:
            async with http.get(f"{server.url}/console/w/acme/", allow_redirects=False) as resp:
                assert resp.status == 303
                assert resp.headers["Location"].startswith("/console/signin?next=")
            async with signed_in(server.url, "ada") as (client, _):
                async with client.get("/console/") as resp:  # one workspace: straight there
                    assert resp.status == 200
                    assert str(resp.url).endswith("/console/w/acme/")
                    text = await resp.text()
                    assert "website" in text
                    assert "hook_a" in text
                    assert resp.headers["Content-Security-Policy"].startswith("default-src 'self'")
                for path in console_paths(server, "GET"):
                    if "{index}" in path or path.endswith("/debugger"):
                        continue
                    async with client.get(fill(path, "acme", "acme")) as resp:
                        # acme has no warehouse and no audience: their pages are the 404s here
                        expected = 404 if re.search(r"\{(warehouse|key)\}", path) else 200
                        if path.endswith("/settings"):
                            expected = 409  # hook_a is in the main file, not the console's

                        assert resp.status == expected, (path, await resp.text())


async def test_the_session_cookie_is_http_only_and_strict(
    make_config: MakeConfig,
) -> None:
    async with Sink() as sink:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "ada", {"acme": "owner"})
        async with (
            running(config) as server,
            aiohttp.ClientSession() as client,
            client.post(
                f"{server.url}/console/signin",
                data={"name": "ada", "password": PASSWORD},
                allow_redirects=False,
            ) as resp,
        ):
            cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Path=/console" in cookie
        rows = sqlite3.connect(config.console.state_path(config.storage.data_dir)).execute(
            "SELECT id_sha256, person FROM sessions"
        )
        ((session_hash, person),) = rows.fetchall()
        session_id = cookie.split("=", 1)[1].split(";", 1)[0]
        assert person == "ada"
        assert session_id not in session_hash


async def test_failed_sign_ins_are_logged_and_then_limited(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with Sink() as sink:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "ada", {"acme": "owner"})
        async with running(config) as server:
            statuses = []
            with capture_logs() as logs:
                for _ in range(config.console.signin_max_failures + 1):
                    async with http.post(
                        f"{server.url}/console/signin",
                        data={"name": "ada", "password": "wrong password"},
                        allow_redirects=False,
                    ) as resp:
                        statuses.append(resp.status)
                # the right password too is refused while the limit holds
                async with http.post(
                    f"{server.url}/console/signin",
                    data={"name": "ada", "password": PASSWORD},
                    allow_redirects=False,
                ) as resp:
                    statuses.append(resp.status)
    limit = config.console.signin_max_failures
    assert statuses == [401] * limit + [429, 429]
    failed = [e for e in logs if e["event"] == "console_signin_failed"]
    assert len(failed) == limit
    assert failed[0]["person"] == "ada"
    assert [e["event"] for e in logs].count("console_signin_limited") == 2
    signins = sqlite3.connect(config.console.state_path(config.storage.data_dir)).execute(
        "SELECT person, succeeded FROM signins"
    )
    assert signins.fetchall() == [("ada", 0)] * (limit + 2)


async def test_a_change_needs_the_csrf_token_and_the_same_origin(
    make_config: MakeConfig,
) -> None:
    async with Sink() as sink:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "ada", {"acme": "owner"})
        async with running(config) as server, signed_in(server.url, "ada") as (client, csrf):
            retry = "/console/w/acme/destinations/hook_a/retry"
            async with client.post(retry, data={}, allow_redirects=False) as resp:
                assert resp.status == 403
            async with client.post(retry, data={"csrf": "forged"}, allow_redirects=False) as resp:
                assert resp.status == 403
            async with client.post(
                retry,
                data={"csrf": csrf},
                headers={"Origin": "https://evil.example"},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 403
                assert "another site" in await resp.text()
            async with client.post(retry, data={"csrf": csrf}, allow_redirects=False) as resp:
                assert resp.status == 303
                assert "waiting%20retries" in resp.headers["Location"]


async def test_nothing_of_another_workspace_is_visible_on_any_page(
    make_config: MakeConfig,
) -> None:
    async with Sink() as sink:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "ada", {"acme": "owner"})
        async with running(config) as server, signed_in(server.url, "ada") as (client, csrf):
            for method in ("GET", "POST"):
                for path in console_paths(server, method):
                    for workspace, items in (("globex", "globex"), ("acme", "globex")):
                        if workspace == "acme" and not re.search(r"\{(source|destination)\}", path):
                            continue  # acme's own pages, with nothing of globex's in the path
                        url = fill(path, workspace, items)
                        kwargs: dict[str, Any] = {"allow_redirects": False}
                        if method == "POST":
                            kwargs["data"] = {"csrf": csrf, "name": "x"}
                        async with client.request(method, url, **kwargs) as resp:
                            assert resp.status == 404, (method, url, resp.status)
            async with client.get("/console/w/acme/") as resp:
                text = await resp.text()
            assert "backend" not in text
            assert "hook_b" not in text
            assert "globex" not in text


async def test_a_read_only_member_is_denied_every_change(make_config: MakeConfig) -> None:
    async with Sink() as sink:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "rob", {"acme": "read-only"})
        async with running(config) as server, signed_in(server.url, "rob") as (client, csrf):
            for path in console_paths(server, "POST"):
                if "{warehouse}" in path:
                    continue  # acme has none; its 404 is tested above
                url = fill(path, "acme", "acme")
                async with client.post(
                    url, data={"csrf": csrf, "name": "new"}, allow_redirects=False
                ) as resp:
                    assert resp.status == 403, (url, resp.status)
            async with client.get("/console/w/acme/sources/website/write-key") as resp:
                assert resp.status == 403
            async with client.get("/console/w/acme/destinations/hook_a") as resp:
                text = await resp.text()
            assert "Replay dead letters" not in text
            assert "Retry waiting" not in text


async def test_workspace_tokens_on_the_admin_api(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with Sink() as sink:
        config = make_config(workspaces_toml(sink.url))
        reader = await add_token(config, "acme", "read-only")
        member = await add_token(config, "acme", "member")
        async with running(config) as server:

            async def call(method: str, path: str, token: str, body: Any = None) -> Any:
                async with http.request(
                    method,
                    f"{server.url}{path}",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                ) as resp:
                    return resp.status, await resp.json()

            code, body = await call("GET", "/admin/deliveries", reader)
            assert code == 200
            assert [d["destination"] for d in body["destinations"]] == ["hook_a"]
            code, body = await call("GET", "/admin/deliveries", ADMIN_TOKEN)
            assert {d["destination"] for d in body["destinations"]} == {"hook_a", "hook_b"}
            replay = {"destination": "hook_a", "dead": True}
            assert (await call("POST", "/admin/replay", reader, replay))[0] == 403
            assert (await call("POST", "/admin/replay", member, replay))[0] == 200
            other = {"destination": "hook_b", "dead": True}
            assert (await call("POST", "/admin/replay", member, other))[0] == 404
            assert (await call("GET", "/admin/deliveries/dead?destination=hook_b", member))[
                0
            ] == 404
            assert (await call("GET", "/admin/services", member))[0] == 403
            async with http.post(
                f"{server.url}/v1/track",
                json={"event": "Hi", "userId": "u", "messageId": "backend-1"},
                headers={"Authorization": basic_auth(OTHER_WRITE_KEY)},
            ) as resp:
                assert resp.status == 200
            show = "/admin/deliveries/messages/backend-1"
            assert (await call("GET", show, ADMIN_TOKEN))[0] == 200
            assert (await call("GET", show, member))[0] == 404  # backend is globex's
            assert (await call("GET", "/admin/deliveries", "cdpd_not-a-token"))[0] == 401


async def test_the_overview_counts_what_flows(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with Sink(status(200)) as sink:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "ada", {"acme": "owner", "globex": "read-only"})
        async with running(config) as server, signed_in(server.url, "ada") as (client, _):
            batch = [
                {"type": "track", "event": "Kept", "userId": "u1", "messageId": f"k{i}"}
                for i in range(3)
            ] + [
                {
                    "type": "track",
                    "event": "Off",
                    "userId": "u1",
                    "messageId": "off",
                    "integrations": {"hook_a": False},
                },
                {"type": "track", "userId": "u1", "messageId": "bad"},  # no event: rejected
            ]
            async with http.post(
                f"{server.url}/v1/batch",
                json={"batch": batch},
                headers={"Authorization": basic_auth(WRITE_KEY)},
            ) as resp:
                assert resp.status == 200
            counts = await _counts_when(
                client, "/console/w/acme/destinations/hook_a?window=10m", "delivered", 3
            )
            assert counts["received"] == 4
            assert counts["filtered_at_destination"] == 1
            assert counts["failed_on_ingest"] == 1
            assert counts["failed"] == 0
            assert len(sink.received) == 3
            async with client.get("/console/w/acme/destinations/hook_a?window=10m") as resp:
                page = await resp.text()
            assert 'data-filtered="integrations object">1<' in page
            assert "P95 latency: <strong data-p95>≤" in page
            async with client.get("/console/w/acme/sources/website?window=1h") as resp:
                page = await resp.text()
            assert re.search(r"<td>track</td><td class=\"num\">4</td>", page)
            assert "missing_event" in page or "invalid" in page
            globex = await _counts_when(
                client, "/console/w/globex/destinations/hook_b?window=10m", "received", 0
            )
            assert globex["received"] == 0
            assert globex["failed_on_ingest"] == 0


async def _counts_when(
    client: aiohttp.ClientSession, path: str, name: str, at_least: int
) -> dict[str, int]:
    async with asyncio.timeout(30):
        while True:
            async with client.get(path) as resp:
                page = await resp.text()
            counts = {
                key: int(value) for key, value in re.findall(r'data-count="(\w+)">(\d+)<', page)
            }
            if counts.get(name, 0) >= at_least:
                return counts
            await asyncio.sleep(0.2)


async def test_the_debugger_streams_what_its_source_accepts(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with Sink() as sink:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "ada", {"acme": "owner"})
        async with running(config) as server, signed_in(server.url, "ada") as (client, _):
            assert not server.ingest.tap.watched
            async with client.get("/console/w/acme/sources/website/debugger") as stream:
                assert stream.headers["Content-Type"] == "text/event-stream"
                assert await stream.content.readline() == b": watching\n"
                assert server.ingest.tap.watched
                for key, message_id in ((OTHER_WRITE_KEY, "elsewhere"), (WRITE_KEY, "seen")):
                    async with http.post(
                        f"{server.url}/v1/track",
                        json={"event": "Hi", "userId": "u", "messageId": message_id},
                        headers={"Authorization": basic_auth(key)},
                    ) as resp:
                        assert resp.status == 200
                event = await asyncio.wait_for(_next_event(stream), 30)
            assert event["message_id"] == "seen"  # backend's message is not website's
            assert json.loads(event["payload"])["event"] == "Hi"
            async with asyncio.timeout(30):  # leaving stops the tap
                while server.ingest.tap.watched:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)


async def _next_event(stream: aiohttp.ClientResponse) -> dict[str, Any]:
    while True:
        line = await stream.content.readline()
        if line.startswith(b"data: "):
            decoded: dict[str, Any] = json.loads(line[6:])
            return decoded


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"/analytics.js/v1/{WRITE_KEY}/analytics.min.js", 200),
        ("/analytics.js/v1/wk_unknown/analytics.min.js", 404),
        ("/analytics.js/v1/wk_retired/analytics.min.js", 404),
        ("/analytics-next/bundles/nothing.bundle.js", 404),
        ("/analytics-next/bundles/..%2Fbundle.py", 404),
    ],
)
async def test_analytics_js_is_served_by_cdpd(
    cdpd: Running, http: aiohttp.ClientSession, path: str, expected: int
) -> None:
    async with http.get(f"{cdpd.url}{path}") as resp:
        assert resp.status == expected
        if expected == 200:
            assert resp.headers["Content-Type"].startswith("text/javascript")
            body = await resp.text()
            assert "analytics-next/bundles/" in body


async def test_the_bundle_s_chunks_are_served(cdpd: Running, http: aiohttp.ClientSession) -> None:
    from cdpd.ingest import bundle

    names = [n for n in bundle._files() if ".bundle." in n]
    assert names
    for name in names:
        async with http.get(f"{cdpd.url}/analytics-next/bundles/{name}") as resp:
            assert resp.status == 200, name
            assert (
                "immutable" in resp.headers["Cache-Control"]
                or "max-age" in resp.headers["Cache-Control"]
            )


async def test_a_warehouse_page_shows_its_syncs_and_syncs_now(
    make_config: MakeConfig, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    async with Sink() as sink:
        warehouse = (
            f'[[warehouses]]\nname = "wh"\ntype = "sqlite"\npath = "{tmp_path / "wh.sqlite3"}"\n'
            "interval_s = 3600\n"
        )
        toml = workspaces_toml(sink.url).replace(
            'destinations = ["hook_a"]\n', 'destinations = ["hook_a"]\nwarehouses = ["wh"]\n'
        )
        config = make_config(toml + warehouse)
        await add_person(config, "ada", {"acme": "member"})
        await add_person(config, "rob", {"acme": "read-only"})
        async with running(config) as server:
            async with http.post(
                f"{server.url}/v1/track",
                json={"event": "Signed Up", "userId": "u1"},
                headers={"Authorization": basic_auth(WRITE_KEY)},
            ) as resp:
                assert resp.status == 200
            async with (
                signed_in(server.url, "rob") as (client, csrf),
                client.post("/console/w/acme/warehouses/wh/sync", data={"csrf": csrf}) as resp,
            ):
                assert resp.status == 403
            async with signed_in(server.url, "ada") as (client, csrf):
                async with client.post(
                    "/console/w/acme/warehouses/wh/sync",
                    data={"csrf": csrf},
                    allow_redirects=False,
                ) as resp:
                    assert resp.status == 303
                    location = resp.headers["Location"]
                # the sync at start-up may have loaded the message already
                assert re.search(r"sync%20success%3A%20[01]%20messages", location)
                async with client.get(location) as resp:
                    page = await resp.text()
                assert re.search(r"sync success: [01] messages", page)
                assert re.search(r"<td>success</td><td class=\"num\">1</td>", page)
                assert "website.tracks: 1" in page or "tracks: 1" in page


async def test_filter_reasons_are_counted_and_the_counts_survive_a_restart(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with Sink() as sink:
        toml = workspaces_toml(sink.url).replace(
            'sources = ["website"]\n[[destinations]]',
            'sources = ["website"]\ntypes = ["track"]\nexclude_events = ["Noise"]\n'
            "[[destinations]]",
        )
        config = make_config(toml)
        await add_person(config, "ada", {"acme": "owner"})
        batch = [
            {"type": "track", "event": "Kept", "userId": "u1"},
            {"type": "track", "event": "Noise", "userId": "u1"},
            {"type": "identify", "userId": "u1"},
            {"type": "track", "event": "Off", "userId": "u1", "integrations": {"All": False}},
        ]
        page = "/console/w/acme/destinations/hook_a?window=1h"
        async with running(config) as server, signed_in(server.url, "ada") as (client, _):
            async with http.post(
                f"{server.url}/v1/batch",
                json={"batch": batch},
                headers={"Authorization": basic_auth(WRITE_KEY)},
            ) as resp:
                assert resp.status == 200
            counts = await _counts_when(client, page, "filtered_at_destination", 3)
            assert counts["received"] == 4
            async with client.get(page) as resp:
                text = await resp.text()
            assert 'data-filtered="filters">2<' in text
            assert 'data-filtered="integrations object">1<' in text
        async with running(config) as server, signed_in(server.url, "ada") as (client, _):
            counts = await _counts_when(client, page, "delivered", 1)
            assert counts["received"] == 4
            assert counts["filtered_at_destination"] == 3
        assert len(sink.received) == 1
