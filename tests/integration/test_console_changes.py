"""Changes from the console on a real cdpd: a destination added from the catalog is written to
conf.d/ and put in force by the live reload (no restart, nothing lost or sent twice), disabled
and enabled again; invalid settings change nothing; only owners change anything; without a
config file the console says so."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from cdpd import config as cdpd_config
from cdpd.app import Running, running
from cdpd.config import Config
from tests.console_support import add_person, signed_in, workspaces_toml
from tests.helpers import WRITE_KEY, basic_auth, config_text
from tests.sink import Sink

MakeConfig = Callable[..., Config]


def config_with_confd(tmp_path: Path, data_dir: Path, sink_url: str) -> Path:
    path = tmp_path / "cdpd.toml"
    (tmp_path / "conf.d").mkdir(exist_ok=True)
    path.write_text('include = "conf.d"\n' + config_text(data_dir, workspaces_toml(sink_url)))
    return path


@asynccontextmanager
async def daemon(path: Path) -> AsyncIterator[Running]:
    async with running(cdpd_config.load(path), config_path=path) as server:
        yield server


async def send(http: aiohttp.ClientSession, server: Running, events: list[str]) -> None:
    batch = [{"type": "track", "userId": "u1", "event": e, "messageId": e} for e in events]
    async with http.post(
        f"{server.url}/v1/batch",
        json={"batch": batch},
        headers={"Authorization": basic_auth(WRITE_KEY)},
    ) as resp:
        assert resp.status == 200, await resp.text()


async def until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 (two sinks; no one event to wait on)
            await asyncio.sleep(0.02)


def add_form(csrf: str, name: str, url: str, action: str = "add") -> dict[str, str]:
    return {"csrf": csrf, "name": name, "url": url, "action": action}


async def test_an_added_destination_is_written_to_conf_d_and_delivers_at_once(
    tmp_path: Path, data_dir: Path, http: aiohttp.ClientSession
) -> None:
    async with Sink() as sink, Sink() as other:
        path = config_with_confd(tmp_path, data_dir, sink.url)
        config = cdpd_config.load(path)
        await add_person(config, "ada", {"acme": "owner"})
        async with daemon(path) as server, signed_in(server.url, "ada") as (client, csrf):
            await send(http, server, ["before"])
            async with client.post(
                "/console/w/acme/catalog/webhook",
                data=add_form(csrf, "hook_new", other.url),
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303, await resp.text()
                assert resp.headers["Location"].startswith("/console/w/acme/destinations/hook_new")
            fragment = tomllib.loads(
                (tmp_path / "conf.d" / "destination-hook_new.toml").read_text()
            )
            assert fragment["destinations"][0]["url"] == other.url
            assert fragment["workspaces"] == [{"name": "acme", "destinations": ["hook_new"]}]
            assert "hook_new" in server.delivery.lanes
            assert server.consumers.reloads == 1
            await send(http, server, ["after"])
            await until(lambda: len(other.messages) >= 1 and len(sink.messages) >= 2)
            async with client.get("/console/w/acme/destinations/hook_new") as resp:
                assert resp.status == 200
                assert "Disable hook_new" in await resp.text()
            async with client.get("/console/w/acme/") as resp:
                assert "hook_new" in await resp.text()
            # The file loads again as check-config loads it: the workspace lists it.
            reloaded = cdpd_config.load(path)
            assert reloaded.workspaces[0].destinations == ["hook_a", "hook_new"]
        new = [m["messageId"] for m in other.messages]
        # A new destination starts where the outbox is when it is added (`cdpd replay`
        # back-fills); the others lose nothing and repeat nothing across the reload.
        assert new == ["after"]
        old = [m["messageId"] for m in sink.messages]
        assert sorted(old) == ["after", "before"]


async def test_disabling_stops_delivery_and_enabling_starts_it_again(
    tmp_path: Path, data_dir: Path, http: aiohttp.ClientSession
) -> None:
    async with Sink() as sink, Sink() as other:
        path = config_with_confd(tmp_path, data_dir, sink.url)
        await add_person(cdpd_config.load(path), "ada", {"acme": "owner"})
        async with daemon(path) as server, signed_in(server.url, "ada") as (client, csrf):
            async with client.post(
                "/console/w/acme/catalog/webhook",
                data=add_form(csrf, "hook_new", other.url),
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303
            await send(http, server, ["one"])
            await until(lambda: other.messages)
            async with client.post(
                "/console/w/acme/destinations/hook_new/enabled",
                data={"csrf": csrf, "enabled": "false"},
            ) as resp:
                assert resp.status == 200
                text = await resp.text()
                assert "hook_new is disabled" in text
                assert "Enable hook_new" in text
            assert "hook_new" not in server.delivery.lanes
            await send(http, server, ["two"])
            await until(lambda: len(sink.messages) >= 2)
            assert len(other.messages) == 1
            async with client.post(
                "/console/w/acme/destinations/hook_new/enabled",
                data={"csrf": csrf, "enabled": "true"},
            ) as resp:
                assert resp.status == 200
            assert "hook_new" in server.delivery.lanes
            await send(http, server, ["three"])
            await until(lambda: len(other.messages) >= 2 and len(sink.messages) >= 3)
            await asyncio.sleep(0.3)
        # Enabled again, it starts from the newest message (as a restart would): what came
        # while it was disabled is not owed to it.
        assert [m["messageId"] for m in other.messages] == ["one", "three"]
        assert [m["messageId"] for m in sink.messages] == ["one", "two", "three"]


async def test_an_owner_changes_the_settings_of_an_added_destination_live(
    tmp_path: Path, data_dir: Path, http: aiohttp.ClientSession
) -> None:
    async with Sink() as sink, Sink() as other, Sink() as moved:
        path = config_with_confd(tmp_path, data_dir, sink.url)
        await add_person(cdpd_config.load(path), "ada", {"acme": "owner"})
        async with daemon(path) as server, signed_in(server.url, "ada") as (client, csrf):
            form = {**add_form(csrf, "hook_new", other.url), "secret": "s3cret"}
            async with client.post(
                "/console/w/acme/catalog/webhook", data=form, allow_redirects=False
            ) as resp:
                assert resp.status == 303
            await send(http, server, ["one"])
            await until(lambda: len(other.messages) == 1)
            settings = "/console/w/acme/destinations/hook_new/settings"
            async with client.get(settings) as resp:
                text = await resp.text()
            assert f'value="{other.url}"' in text
            assert "s3cret" not in text  # secrets are never shown
            async with client.post(
                settings, data={"csrf": csrf, "url": "not a url", "action": "save"}
            ) as resp:
                assert resp.status == 422
                assert "url: Expected" in await resp.text()
            async with client.post(
                settings, data={"csrf": csrf, "url": moved.url, "action": "save"}
            ) as resp:
                assert resp.status == 200
                assert "hook_new&#39;s settings are saved" in await resp.text()
            written = tomllib.loads((tmp_path / "conf.d" / "destination-hook_new.toml").read_text())
            assert written["destinations"][0]["url"] == moved.url
            assert written["destinations"][0]["secret"] == "s3cret"  # left empty: kept
            await send(http, server, ["two"])
            await until(lambda: len(moved.messages) == 1)
            await asyncio.sleep(0.2)
            # The same lane's position: "one" is not sent again, "two" goes to the new URL.
            assert [m["messageId"] for m in other.messages] == ["one"]
            assert [m["messageId"] for m in moved.messages] == ["two"]
            async with client.get("/console/w/acme/destinations/hook_a/settings") as resp:
                assert resp.status == 409


async def test_invalid_settings_change_nothing(tmp_path: Path, data_dir: Path) -> None:
    async with Sink() as sink:
        path = config_with_confd(tmp_path, data_dir, sink.url)
        await add_person(cdpd_config.load(path), "ada", {"acme": "owner"})
        async with daemon(path) as server, signed_in(server.url, "ada") as (client, csrf):
            for data, error in (
                (add_form(csrf, "hook_a", f"{sink.url}/x"), "exists already"),
                (add_form(csrf, "hook_x", "not a url"), "url: Expected `str` matching"),
                (
                    {**add_form(csrf, "hook_y", f"{sink.url}/y"), "headers": "{bad"},
                    "headers: expected dict",
                ),
                (
                    {**add_form(csrf, "hook_z", f"{sink.url}/z"), "batch_size": "0"},
                    "batch_size: Expected `int` &gt;= 1",
                ),
            ):
                async with client.post("/console/w/acme/catalog/webhook", data=data) as resp:
                    assert resp.status == 422, data
                    assert error in await resp.text()
            assert list((tmp_path / "conf.d").iterdir()) == []
            # The whole config is checked: a main file broken since the start refuses the
            # change, and the fragment written for it is taken back.
            path.write_text(path.read_text() + "[[sources]]\nname = 1\n")
            async with client.post(
                "/console/w/acme/catalog/webhook", data=add_form(csrf, "hook_w", f"{sink.url}/w")
            ) as resp:
                assert resp.status == 422
                assert "sources[3].name" in await resp.text()
            assert list((tmp_path / "conf.d").iterdir()) == []
            assert server.consumers.reloads == 0
            # A destination of the main file is changed there, not by the console.
            async with client.post(
                "/console/w/acme/destinations/hook_a/enabled",
                data={"csrf": csrf, "enabled": "false"},
            ) as resp:
                assert resp.status == 409
                assert "change it there" in await resp.text()


@pytest.mark.parametrize("role", ["member", "read-only"])
async def test_only_owners_change_the_config(tmp_path: Path, data_dir: Path, role: str) -> None:
    async with Sink() as sink, Sink() as other:
        path = config_with_confd(tmp_path, data_dir, sink.url)
        await add_person(cdpd_config.load(path), "ada", {"acme": "owner"})
        await add_person(cdpd_config.load(path), "mel", {"acme": role})
        async with daemon(path) as server:
            async with (
                signed_in(server.url, "ada") as (client, csrf),
                client.post(
                    "/console/w/acme/catalog/webhook",
                    data=add_form(csrf, "hook_new", other.url),
                    allow_redirects=False,
                ) as resp,
            ):
                assert resp.status == 303
            async with signed_in(server.url, "mel") as (client, csrf):
                async with client.post(
                    "/console/w/acme/catalog/webhook",
                    data=add_form(csrf, "hook_mel", f"{sink.url}/mel"),
                ) as resp:
                    assert resp.status == 403
                async with client.post(
                    "/console/w/acme/destinations/hook_new/enabled",
                    data={"csrf": csrf, "enabled": "false"},
                ) as resp:
                    assert resp.status == 403
                async with client.get("/console/w/acme/destinations/hook_new") as resp:
                    assert "Disable hook_new" not in await resp.text()
            assert sorted(p.name for p in (tmp_path / "conf.d").iterdir()) == [
                "destination-hook_new.toml"
            ]
            assert "hook_new" in server.delivery.lanes


async def test_without_a_config_file_the_console_says_changes_need_one(
    make_config: MakeConfig,
) -> None:
    async with Sink() as sink, Sink() as other:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "ada", {"acme": "owner"})
        async with running(config) as server, signed_in(server.url, "ada") as (client, csrf):
            async with client.get("/console/w/acme/catalog/webhook") as resp:
                text = await resp.text()
            assert "Changes from the console need a config file" in text
            assert 'value="add"' not in text
            async with client.post(
                "/console/w/acme/catalog/webhook",
                data=add_form(csrf, "hook_new", other.url),
            ) as resp:
                assert resp.status == 422
                assert "need a config file" in await resp.text()
            assert "hook_new" not in server.delivery.lanes


async def test_a_main_file_without_include_is_named(tmp_path: Path, data_dir: Path) -> None:
    async with Sink() as sink, Sink() as other:
        path = tmp_path / "cdpd.toml"
        path.write_text(config_text(data_dir, workspaces_toml(sink.url)))
        await add_person(cdpd_config.load(path), "ada", {"acme": "owner"})
        async with (
            daemon(path) as server,
            signed_in(server.url, "ada") as (client, csrf),
            client.post(
                "/console/w/acme/catalog/webhook", data=add_form(csrf, "hook_new", other.url)
            ) as resp,
        ):
            assert resp.status == 422
            assert "add include = &#34;conf.d&#34;" in await resp.text()
