"""The console's Privacy page (inbox, inventory, classify buttons) and profile explorer on a
real cdpd: what a workspace's sources sent, classified by a member and applied at once, and
nothing of another workspace's sources visible or classifiable."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from cdpd.app import Running, running
from cdpd.config import Config
from tests.console_support import add_person, signed_in, workspaces_toml
from tests.helpers import OTHER_WRITE_KEY, WRITE_KEY, basic_auth, query
from tests.sink import Sink

MakeConfig = Callable[..., Config]
IDENTITY = '[identity]\nspace = "spa_test"\naccess_tokens = ["pat_x"]\n'


async def send(
    http: aiohttp.ClientSession, server: Running, key: str, *messages: dict[str, Any]
) -> None:
    headers = {"Authorization": basic_auth(key)}
    async with http.post(
        f"{server.url}/v1/batch", json={"batch": list(messages)}, headers=headers
    ) as resp:
        assert resp.status == 200, await resp.text()


async def inbox_has(data_dir: Any, fields: set[str]) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                seen = {r[0] for r in query(data_dir, "SELECT field FROM privacy_inbox")}
            except sqlite3.OperationalError:
                seen = set()
            if fields <= seen:
                return
            await asyncio.sleep(0.05)


async def test_the_privacy_page_shows_and_classifies_the_workspace_s_fields_only(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Any
) -> None:
    async with Sink() as sink:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "mel", {"acme": "member"})
        await add_person(config, "rob", {"acme": "read-only"})
        async with running(config) as server:
            await send(
                http,
                server,
                WRITE_KEY,
                {"type": "track", "event": "E", "userId": "u1", "properties": {"email": "a@b.co"}},
            )
            await send(
                http,
                server,
                OTHER_WRITE_KEY,
                {"type": "track", "event": "E", "userId": "u2", "properties": {"ssn_x": "1"}},
            )
            await inbox_has(data_dir, {"properties.email", "properties.ssn_x"})
            async with signed_in(server.url, "mel") as (client, csrf):
                async with client.get("/console/w/acme/privacy") as resp:
                    assert resp.status == 200
                    text = await resp.text()
                assert "properties.email" in text
                assert "properties.ssn_x" not in text  # globex's source sent it
                assert 'aria-label="Red: properties.email"' in text
                async with client.post(
                    "/console/w/acme/privacy/classify",
                    data={"csrf": csrf, "field": "properties.email", "class": "yellow"},
                ) as resp:
                    assert resp.status == 200
                    text = await resp.text()
                assert "properties.email is yellow" in text
                inventory = text[text.index("data-inventory") :]
                assert re.search(r"properties\.email</code></td><td data-class>yellow", inventory)
                assert (
                    server.ingest.governance.privacy.inventory.classes.get("properties.email")
                    == "yellow"
                )
                # Another workspace's field, an unknown class: refused, nothing changes.
                for data, expected in (
                    ({"field": "properties.ssn_x", "class": "red"}, 404),
                    ({"field": "properties.email", "class": "purple"}, 422),
                ):
                    async with client.post(
                        "/console/w/acme/privacy/classify", data={"csrf": csrf, **data}
                    ) as resp:
                        assert resp.status == expected, data
                async with client.post(
                    "/console/w/acme/privacy/classify",
                    data={"csrf": csrf, "field": "properties.email", "class": "none"},
                ) as resp:
                    assert "properties.email is out of the inventory" in await resp.text()
            async with signed_in(server.url, "rob") as (client, csrf):
                async with client.get("/console/w/acme/privacy") as resp:
                    text = await resp.text()
                assert "properties.email" in text
                assert "Red: properties.email" not in text
                async with client.post(
                    "/console/w/acme/privacy/classify",
                    data={"csrf": csrf, "field": "properties.email", "class": "red"},
                ) as resp:
                    assert resp.status == 403
        assert query(data_dir, "SELECT field, class, classified_by FROM privacy_inventory") == []


async def test_the_profile_explorer_shows_what_the_workspace_s_sources_contributed(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with Sink() as sink:
        config = make_config(IDENTITY + workspaces_toml(sink.url))
        await add_person(config, "rob", {"acme": "read-only"})
        await add_person(config, "gil", {"globex": "read-only"})
        async with running(config) as server:
            await send(
                http,
                server,
                WRITE_KEY,
                {"type": "page", "anonymousId": "anon-1", "name": "Pricing", "messageId": "p1"},
                {
                    "type": "identify",
                    "anonymousId": "anon-1",
                    "userId": "user-1",
                    "traits": {"plan": "pro"},
                    "messageId": "i1",
                },
                {"type": "track", "userId": "user-1", "event": "Order Done", "messageId": "t1"},
                {"type": "page", "anonymousId": "anon-2", "name": "Home", "messageId": "p2"},
                {
                    "type": "identify",
                    "anonymousId": "anon-2",
                    "userId": "user-1",
                    "messageId": "i2",
                },
            )
            await send(
                http,
                server,
                OTHER_WRITE_KEY,
                {"type": "identify", "userId": "user-9", "traits": {"x": 1}, "messageId": "b1"},
            )
            assert server.identity is not None
            async with asyncio.timeout(30):
                await server.identity.wait_resolved(server.writer.last_seq)
            async with signed_in(server.url, "rob") as (client, _):
                async with client.get("/console/w/acme/") as resp:
                    assert "Profile explorer" in await resp.text()
                async with client.get("/console/w/acme/profiles?lookup=user_id:user-1") as resp:
                    assert resp.status == 200
                    text = await resp.text()
                assert "anon-1" in text
                assert "plan" in text
                assert "track Order Done" in text
                merges = text[text.index("data-merges") :]
                assert "merged into" in merges
                assert "<code>i2</code>" in merges  # the message that triggered it ...
                assert "&#34;anonymousId&#34;: &#34;anon-2&#34;" in merges  # ... as it was sent
                for lookup, status in (
                    ("user_id:user-9", 404),  # globex's
                    ("user_id:nobody", 404),
                    ("no-colon", 422),
                ):
                    async with client.get(f"/console/w/acme/profiles?lookup={lookup}") as resp:
                        assert resp.status == status, lookup
                        assert "user-9" not in (await resp.text()).replace(lookup, "")
            async with signed_in(server.url, "gil") as (client, _):
                async with client.get("/console/w/globex/profiles?lookup=user_id:user-1") as resp:
                    assert resp.status == 404
                async with client.get("/console/w/globex/profiles?lookup=user_id:user-9") as resp:
                    assert resp.status == 200
                    assert '"x"' in await resp.text() or "x</td>" in await resp.text()


async def test_without_identity_there_is_no_profile_explorer(
    make_config: MakeConfig,
) -> None:
    async with Sink() as sink:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "rob", {"acme": "read-only"})
        async with running(config) as server, signed_in(server.url, "rob") as (client, _):
            async with client.get("/console/w/acme/") as resp:
                assert "Profile explorer" not in await resp.text()
            async with client.get("/console/w/acme/profiles?lookup=user_id:u1") as resp:
                assert resp.status == 404


async def test_the_privacy_page_shows_a_page_at_a_time_and_finds_fields_by_name(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Any
) -> None:
    fields = {f"f{n:03}": n for n in range(120)}
    async with Sink() as sink:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "mel", {"acme": "member"})
        async with running(config) as server:
            track = {"type": "track", "event": "E", "userId": "u1", "properties": fields}
            await send(http, server, WRITE_KEY, track)
            other = {"type": "track", "event": "E", "userId": "u2", "properties": {"f999": 1}}
            await send(http, server, OTHER_WRITE_KEY, other)
            await inbox_has(
                data_dir, {f"properties.{name}" for name in fields} | {"properties.f999"}
            )
            async with signed_in(server.url, "mel") as (client, csrf):
                for name in ("f000", "f001", "f002"):
                    async with client.post(
                        "/console/w/acme/privacy/classify",
                        data={"csrf": csrf, "field": f"properties.{name}", "class": "green"},
                    ) as resp:
                        assert resp.status == 200

                async def shown(query_text: str) -> tuple[str, list[str], list[str]]:
                    async with client.get(f"/console/w/acme/privacy?{query_text}") as resp:
                        assert resp.status == 200
                        text = await resp.text()
                    inbox, inventory = text.split("data-inventory-count", 1)
                    pattern = r"<tr><td><code>properties\.(f\d+)</code>"
                    return text, re.findall(pattern, inbox), re.findall(pattern, inventory)

                text, inbox, inventory = await shown("")
                assert "data-inbox-count>117<" in text  # globex's f999 is not counted
                assert inbox == [f"f{n:03}" for n in range(3, 53)]
                assert inventory == ["f000", "f001", "f002"]
                assert "51–100 of 117" not in text
                assert "1–50 of 117" in text
                assert 'href="?q=&amp;inbox=2&amp;inventory=1" rel="next"' in text
                text, inbox, _ = await shown("inbox=3")
                assert inbox == [f"f{n:03}" for n in range(103, 120)]
                assert "101–117 of 117" in text
                assert 'rel="next"' not in text
                text, inbox, inventory = await shown("q=f11")
                assert inbox == [f"f{n}" for n in range(110, 120)]
                assert inventory == []
                assert "data-inbox-count>10<" in text
                _, inbox, inventory = await shown("q=f00")
                assert inbox == [f"f00{n}" for n in range(3, 10)]
                assert inventory == ["f000", "f001", "f002"]
                for literal in ("%", "_", "f999"):  # LIKE's wildcards are plain text here
                    _, inbox, inventory = await shown(f"q={quote(literal)}")
                    assert (inbox, inventory) == ([], []), literal
                text, inbox, _ = await shown("inbox=abc&inventory=-1")  # read as page 1
                assert inbox[0] == "f003"
