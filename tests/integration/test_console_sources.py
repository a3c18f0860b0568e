"""Sources added from the console on a real cdpd: written to conf.d/ with a random write key and
put in force by the live reload (ingest takes the key at once and refuses it once the source
is disabled or removed); changed, disabled, enabled and removed by owners only; invisible to
other workspaces; invalid input changes nothing."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cdpd import config as cdpd_config
from cdpd.app import Running
from tests.console_support import add_person, signed_in
from tests.helpers import basic_auth, query
from tests.integration.test_console_changes import config_with_confd, daemon
from tests.sink import Sink

ADD = "/console/w/acme/add-source"


async def ingest(http: aiohttp.ClientSession, server: Running, key: str, event: str) -> int:
    message = {"type": "track", "userId": "u1", "event": event, "messageId": event}
    async with http.post(
        f"{server.url}/v1/batch",
        json={"batch": [message]},
        headers={"Authorization": basic_auth(key)},
    ) as resp:
        return resp.status


async def add(client: aiohttp.ClientSession, csrf: str, **fields: str) -> aiohttp.ClientResponse:
    async with client.post(ADD, data={"csrf": csrf, **fields}, allow_redirects=False) as resp:
        await resp.read()
        return resp


def fragment(tmp_path: Path, name: str) -> dict[str, Any]:
    return tomllib.loads((tmp_path / "conf.d" / f"source-{name}.toml").read_text())


async def test_an_added_source_takes_messages_at_once_and_is_refused_once_removed(
    tmp_path: Path, data_dir: Path, http: aiohttp.ClientSession
) -> None:
    async with Sink() as sink:
        path = config_with_confd(tmp_path, data_dir, sink.url)
        await add_person(cdpd_config.load(path), "ada", {"acme": "owner"})
        async with daemon(path) as server, signed_in(server.url, "ada") as (client, csrf):
            resp = await add(client, csrf, name="shop_app", type="mobile")
            assert resp.status == 303
            assert resp.headers["Location"].startswith("/console/w/acme/sources/shop_app?notice=")
            written = fragment(tmp_path, "shop_app")
            (source,) = written["sources"]
            key = source["write_key"]
            assert re.fullmatch(r"[A-Za-z0-9]{32}", key)
            assert source == {"name": "shop_app", "type": "mobile", "write_key": key}
            assert written["workspaces"] == [{"name": "acme", "sources": ["shop_app"]}]
            assert server.consumers.reloads == 1
            # The next request after the reload is taken, under the new source's name.
            assert await ingest(http, server, key, "first") == 200
            assert query(data_dir, "SELECT source FROM messages WHERE message_id = 'first'") == [
                ("shop_app",)
            ]
            async with client.get(resp.headers["Location"]) as page:
                text = await page.text()
            assert "shop_app is added" in text
            assert key not in text  # hidden until asked
            assert '<span class="tag">mobile</span>' in text
            async with client.get("/console/w/acme/sources/shop_app/write-key") as resp:
                text = await resp.text()
            assert f"<code data-write-key>{key}</code>" in text
            assert ".apiHost(&#34;127.0.0.1:" in text  # the mobile libraries' setup
            async with client.get("/console/w/acme/") as resp:
                assert "/console/w/acme/sources/shop_app" in await resp.text()
            assert [s.name for s in cdpd_config.load(path).sources][-1] == "shop_app"

            # A new type: the key stays.
            async with client.post(
                "/console/w/acme/sources/shop_app/settings", data={"csrf": csrf, "type": "server"}
            ) as resp:
                assert resp.status == 200
                assert "shop_app&#39;s settings are saved" in await resp.text()
            assert fragment(tmp_path, "shop_app")["sources"] == [
                {"name": "shop_app", "type": "server", "write_key": key}
            ]
            async with client.get("/console/w/acme/sources/shop_app/write-key") as resp:
                assert "analytics.host = " in await resp.text()

            async with client.post(
                "/console/w/acme/sources/shop_app/enabled", data={"csrf": csrf, "enabled": "false"}
            ) as resp:
                assert "shop_app is disabled" in await resp.text()
            assert await ingest(http, server, key, "while-disabled") == 403
            async with client.post(
                "/console/w/acme/sources/shop_app/enabled", data={"csrf": csrf, "enabled": "true"}
            ) as resp:
                assert "shop_app is enabled" in await resp.text()
            assert await ingest(http, server, key, "second") == 200

            remove = "/console/w/acme/sources/shop_app/remove"
            async with client.post(remove, data={"csrf": csrf}) as resp:
                assert resp.status == 422  # not confirmed
            assert await ingest(http, server, key, "unconfirmed") == 200
            async with client.post(remove, data={"csrf": csrf, "confirm": "yes"}) as resp:
                assert resp.status == 200
                assert "shop_app is removed" in await resp.text()
            assert not (tmp_path / "conf.d" / "source-shop_app.toml").exists()
            assert await ingest(http, server, key, "after-removal") == 401
            async with client.get("/console/w/acme/sources/shop_app") as resp:
                assert resp.status == 404
            assert "shop_app" not in {s.name for s in cdpd_config.load(path).sources}
        sent = query(data_dir, "SELECT message_id FROM messages WHERE source = 'shop_app'")
        assert sorted(sent) == [("first",), ("second",), ("unconfirmed",)]


async def test_each_source_gets_a_different_key_and_invalid_input_changes_nothing(
    tmp_path: Path, data_dir: Path
) -> None:
    async with Sink() as sink:
        path = config_with_confd(tmp_path, data_dir, sink.url)
        await add_person(cdpd_config.load(path), "ada", {"acme": "owner"})
        async with daemon(path) as server, signed_in(server.url, "ada") as (client, csrf):
            for fields, error in (
                ({"name": "my shop", "type": "javascript"}, "name: a name is 1 to 100"),
                ({"name": "", "type": "javascript"}, "name: a name is 1 to 100"),
                ({"name": "x" * 101, "type": "javascript"}, "name: a name is 1 to 100"),
                ({"name": "website", "type": "javascript"}, "a source named &#39;website&#39;"),
                ({"name": "shop", "type": "desktop"}, "type: expected one of javascript"),
                ({"name": "shop"}, "type: expected one of javascript"),
            ):
                async with client.post(ADD, data={"csrf": csrf, **fields}) as resp:
                    assert resp.status == 422, fields
                    assert error in await resp.text(), fields
            assert list((tmp_path / "conf.d").iterdir()) == []
            assert server.consumers.reloads == 0
            for name in ("one", "two"):
                assert (await add(client, csrf, name=name, type="server")).status == 303
            keys = {fragment(tmp_path, n)["sources"][0]["write_key"] for n in ("one", "two")}
            assert len(keys) == 2
            # A source of the main file is changed there.
            for action, data in (("enabled", {"enabled": "false"}), ("remove", {"confirm": "yes"})):
                async with client.post(
                    f"/console/w/acme/sources/website/{action}", data={"csrf": csrf, **data}
                ) as resp:
                    assert resp.status == 409
                    assert "change it there" in await resp.text()
            # Removing a source a destination still names would break the config: refused,
            # and the source stays in force.
            path.write_text(
                path.read_text()
                + '[[destinations]]\nname = "hook_one"\ntype = "webhook"\n'
                + f'url = "{sink.url}/one"\nsources = ["one"]\n'
            )
            async with client.post(
                "/console/w/acme/sources/one/remove", data={"csrf": csrf, "confirm": "yes"}
            ) as resp:
                assert resp.status == 409
                assert "no source is named &#39;one&#39;" in await resp.text()
            assert (tmp_path / "conf.d" / "source-one.toml").exists()
            assert "one" in {s.name for s in server.consumers.config.sources}


@pytest.mark.parametrize("role", ["member", "read-only"])
async def test_only_owners_add_or_change_sources(
    tmp_path: Path, data_dir: Path, http: aiohttp.ClientSession, role: str
) -> None:
    async with Sink() as sink:
        path = config_with_confd(tmp_path, data_dir, sink.url)
        config = cdpd_config.load(path)
        await add_person(config, "ada", {"acme": "owner"})
        await add_person(config, "mel", {"acme": role})
        async with daemon(path) as server:
            async with signed_in(server.url, "ada") as (client, csrf):
                assert (await add(client, csrf, name="app", type="server")).status == 303
            key = fragment(tmp_path, "app")["sources"][0]["write_key"]
            async with signed_in(server.url, "mel") as (client, csrf):
                async with client.get("/console/w/acme/") as resp:
                    assert "Add a source" not in await resp.text()
                async with client.get(ADD) as resp:
                    assert resp.status == 403
                assert (await add(client, csrf, name="mine", type="server")).status == 403
                for action, data in (
                    ("settings", {"type": "http"}),
                    ("enabled", {"enabled": "false"}),
                    ("remove", {"confirm": "yes"}),
                ):
                    async with client.post(
                        f"/console/w/acme/sources/app/{action}", data={"csrf": csrf, **data}
                    ) as resp:
                        assert resp.status == 403, action
                async with client.get("/console/w/acme/sources/app") as resp:
                    text = await resp.text()
                assert "Remove app" not in text
                assert "Disable app" not in text
            assert sorted(p.name for p in (tmp_path / "conf.d").iterdir()) == ["source-app.toml"]
            assert fragment(tmp_path, "app")["sources"][0]["type"] == "server"
            assert await ingest(http, server, key, "still-in-force") == 200


async def test_another_workspace_cannot_see_or_change_an_added_source(
    tmp_path: Path, data_dir: Path
) -> None:
    async with Sink() as sink:
        path = config_with_confd(tmp_path, data_dir, sink.url)
        config = cdpd_config.load(path)
        await add_person(config, "ada", {"acme": "owner"})
        await add_person(config, "gus", {"globex": "owner"})
        async with daemon(path) as server:
            async with signed_in(server.url, "ada") as (client, csrf):
                assert (await add(client, csrf, name="app", type="http")).status == 303
            async with signed_in(server.url, "gus") as (client, csrf):
                async with client.get("/console/w/globex/") as resp:
                    assert "app" not in re.findall(r"/sources/([^\"/?]+)", await resp.text())
                for path_ in (
                    "/console/w/acme/sources/app",
                    "/console/w/acme/sources/app/write-key",
                    "/console/w/globex/sources/app",
                    "/console/w/globex/sources/app/write-key",
                    "/console/w/acme/add-source",
                ):
                    async with client.get(path_) as resp:
                        assert resp.status == 404, path_
                for action, data in (
                    ("settings", {"type": "server"}),
                    ("enabled", {"enabled": "false"}),
                    ("remove", {"confirm": "yes"}),
                ):
                    for workspace in ("acme", "globex"):
                        async with client.post(
                            f"/console/w/{workspace}/sources/app/{action}",
                            data={"csrf": csrf, **data},
                        ) as resp:
                            assert resp.status == 404, (workspace, action)
                # A source added to globex joins globex only.
                async with client.post(
                    "/console/w/globex/add-source",
                    data={"csrf": csrf, "name": "g_app", "type": "server"},
                    allow_redirects=False,
                ) as resp:
                    assert resp.status == 303
            workspaces = {w.name: w.sources for w in server.consumers.config.workspaces}
            assert workspaces == {"acme": ["website", "app"], "globex": ["backend", "g_app"]}
            assert fragment(tmp_path, "app")["sources"][0]["type"] == "http"
