"""Engage inside a real cdpd: the official Python client's messages resolve to a profile, the
profile enters an audience, and the entry reaches a webhook destination in Segment's shapes."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from segment.analytics import Client

from cdpd import cli
from cdpd import config as cdpd_config
from cdpd.app import Running, running
from cdpd.engage.messages import computation_id
from tests.helpers import WRITE_KEY, FakeClock, audience_toml, engage_toml, query
from tests.sink import Sink

MakeConfig = Callable[..., cdpd_config.Config]


def engage_config(url: str) -> str:
    repeat = audience_toml(
        "repeat_buyers",
        "event('Order Completed').within(1 hours).count() >= 2",
        send_identify=True,
        send_track=True,
    )
    return (
        engage_toml(url)
        + repeat
        + """
[[computed_traits]]
key = "orders"
query = "event('Order Completed').within(1 hours).count()"
"""
    )


def send(server: Running, calls: Callable[[Client], None]) -> None:
    client = Client(WRITE_KEY, host=server.url, upload_interval=0.01, sync_mode=True)
    calls(client)
    client.flush()


def buy(client: Client) -> None:
    client.identify("u1", {"email": "jane@example.com"})
    for n in range(2):
        client.track("u1", "Order Completed", {"order_id": f"o{n}"}, timestamp=datetime.now(UTC))


def engage_messages(sink: Sink) -> list[dict[str, Any]]:
    return [m for r in sink.received for m in r.messages if "personas" in m.get("context", {})]


def engage_db(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "engage.sqlite3") as conn:
        return conn.execute(sql).fetchall()


PERSONAS = {
    "computation_class": "audience",
    "computation_id": computation_id("audience", "repeat_buyers"),
    "computation_key": "repeat_buyers",
    "namespace": "spa_main",
    "space_id": "main",
}


async def test_a_profile_enters_and_the_destination_gets_identify_and_track(
    make_config: MakeConfig, data_dir: Path
) -> None:
    async with Sink() as sink, running(make_config(engage_config(sink.url))) as server:
        await asyncio.to_thread(send, server, buy)
        await sink.wait_for(lambda s: len(engage_messages(s)) >= 2, timeout_s=10)
    identify, track = sorted(engage_messages(sink), key=lambda m: m["type"])
    assert identify["type"] == "identify"
    assert identify["userId"] == "u1"
    assert identify["traits"] == {"repeat_buyers": True, "email": "jane@example.com"}
    assert identify["context"]["personas"] == PERSONAS
    assert identify["integrations"] == {"All": False, "crm": True}
    assert track["type"] == "track"
    assert track["event"] == "Audience Entered"
    assert track["userId"] == "u1"
    assert track["properties"] == {"audience_key": "repeat_buyers", "repeat_buyers": True}
    assert track["context"]["personas"] == PERSONAS
    assert track["context"]["traits"] == {"email": "jane@example.com"}
    # Messages of the space's output source in the outbox (archived, replayable).
    stored = query(
        data_dir, "SELECT type, event FROM messages WHERE source = 'engage_main' ORDER BY seq"
    )
    assert sorted(stored) == [("identify", None), ("track", "Audience Entered")]
    assert engage_db(data_dir, "SELECT key, id FROM engage_values WHERE key = 'orders'")


async def test_a_lapsing_window_sends_the_exit_without_a_new_event(
    make_config: MakeConfig, data_dir: Path
) -> None:
    clock = FakeClock()
    async with (
        Sink() as sink,
        running(make_config(engage_config(sink.url)), clock=clock) as server,
    ):
        await asyncio.to_thread(send, server, buy)
        await sink.wait_for(lambda s: len(engage_messages(s)) >= 2, timeout_s=10)
        clock.advance(2 * 3600 + 5)
        await sink.wait_for(lambda s: len(engage_messages(s)) >= 4, timeout_s=10)
    exits = [m for m in engage_messages(sink)][2:]
    assert sorted((m["type"], m.get("event")) for m in exits) == [
        ("identify", None),
        ("track", "Audience Exited"),
    ]
    (identify,) = [m for m in exits if m["type"] == "identify"]
    assert identify["traits"]["repeat_buyers"] is False


async def test_a_restart_sends_no_entry_twice_and_applies_nothing_twice(
    make_config: MakeConfig, data_dir: Path
) -> None:
    config = make_config(engage_config("http://127.0.0.1:9/unreachable"))
    async with running(config) as server:
        await asyncio.to_thread(send, server, buy)
        await wait_until(
            lambda: (
                query(data_dir, "SELECT count(*) FROM messages WHERE source = 'engage_main'")
                == [(2,)]
            )
        )
    async with running(config) as server:
        await asyncio.to_thread(
            send, server, lambda c: c.track("u1", "Order Completed", {"order_id": "o3"})
        )
        await wait_until(
            lambda: (
                engage_db(data_dir, "SELECT value FROM engage_values WHERE key = 'orders'")
                == [("3",)]
            )
        )
    entries = query(
        data_dir,
        "SELECT count(*) FROM messages WHERE source = 'engage_main' AND event = 'Audience Entered'",
    )
    assert entries == [(1,)]
    (position,) = engage_db(
        data_dir, "SELECT value FROM engage_position WHERE name = 'resolutions'"
    )
    ((last_website_seq,),) = query(
        data_dir, "SELECT max(seq) FROM messages WHERE source = 'website'"
    )
    assert position[0] >= last_website_seq


async def test_a_forgotten_profile_is_forgotten_by_engage(
    make_config: MakeConfig, data_dir: Path
) -> None:
    async with running(make_config(engage_config("http://127.0.0.1:9/x"))) as server:
        await asyncio.to_thread(send, server, buy)
        await wait_until(
            lambda: engage_db(data_dir, "SELECT count(*) FROM engage_values") == [(2,)]
        )
        assert server.identity is not None
        assert await server.identity.forget_user("u1")
        await wait_until(
            lambda: engage_db(data_dir, "SELECT count(*) FROM engage_profiles") == [(0,)]
        )
        assert engage_db(data_dir, "SELECT count(*) FROM engage_values") == [(0,)]


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 (another process's files: nothing to await)
            await asyncio.sleep(0.05)


async def test_the_profile_api_lists_audiences_and_computed_traits(
    make_config: MakeConfig, data_dir: Path, http: aiohttp.ClientSession
) -> None:
    async with running(make_config(engage_config("http://127.0.0.1:9/x"))) as server:
        await asyncio.to_thread(send, server, buy)
        await wait_until(
            lambda: engage_db(data_dir, "SELECT count(*) FROM engage_values") == [(2,)]
        )
        base = f"{server.url}/v1/spaces/main/collections/users/profiles/user_id:u1/traits"
        auth = {"Authorization": "Basic " + base64.b64encode(b"tok:").decode()}
        answers = {}
        for trait_class in ("audience", "computed_trait"):
            async with http.get(f"{base}?class={trait_class}", headers=auth) as resp:
                assert resp.status == 200
                answers[trait_class] = (await resp.json())["traits"]
        async with http.get(base, headers=auth) as resp:
            custom = (await resp.json())["traits"]
    assert answers == {"audience": {"repeat_buyers": True}, "computed_trait": {"orders": 2}}
    # The Identify Engage sent through the outbox is resolved like any other message.
    assert custom == {"email": "jane@example.com", "repeat_buyers": True}


async def test_resync_while_running_sends_every_member_again(
    make_config: MakeConfig, data_dir: Path, tmp_path: Path
) -> None:
    async with Sink() as sink, running(make_config(engage_config(sink.url))) as server:
        await asyncio.to_thread(send, server, buy)
        await sink.wait_for(lambda s: len(engage_messages(s)) >= 2, timeout_s=10)
        code = await asyncio.to_thread(
            cli.main,
            [
                "audiences",
                "resync",
                "repeat_buyers",
                "--destination",
                "crm",
                "--config",
                str(tmp_path / "cdpd.toml"),
            ],
        )
        assert code == 0
        await sink.wait_for(lambda s: len(engage_messages(s)) >= 4, timeout_s=10)
    first, again = engage_messages(sink)[:2], engage_messages(sink)[2:]
    # A first sync sends the member as an entry again, under new messageIds.
    assert sorted(m["type"] for m in again) == ["identify", "track"]
    assert {m["properties"]["repeat_buyers"] for m in again if m["type"] == "track"} == {True}
    assert {m["messageId"] for m in first}.isdisjoint(m["messageId"] for m in again)


BASE = """
[identity]
space = "main"
access_tokens = ["tok"]

[[audiences]]
key = "signed_up"
query = "event('Signed Up').count() >= 1"
"""
ADDED = """
[[computed_traits]]
key = "lifetime_orders"
query = "event('Order Completed').count()"
historical = true

[[computed_traits]]
key = "orders_since_added"
query = "event('Order Completed').count()"
historical = false
"""


async def test_a_new_historical_definition_is_backfilled_from_the_archive(
    make_config: MakeConfig, data_dir: Path
) -> None:
    async with running(make_config(BASE)) as server:
        await asyncio.to_thread(send, server, buy)
        await wait_until(
            lambda: (
                engage_db(
                    data_dir, "SELECT value >= 3 FROM engage_position WHERE name = 'resolutions'"
                )
                == [(1,)]
            )
        )
    async with running(make_config(BASE + ADDED)) as server:
        await wait_until(
            lambda: (
                engage_db(data_dir, "SELECT value FROM engage_values WHERE key = 'lifetime_orders'")
                == [("2",)]
            )
        )
        await asyncio.to_thread(
            send, server, lambda c: c.track("u1", "Order Completed", {"order_id": "o3"})
        )
        await wait_until(
            lambda: (
                engage_db(
                    data_dir,
                    "SELECT key, value FROM engage_values WHERE key != 'signed_up' ORDER BY key",
                )
                == [("lifetime_orders", "3"), ("orders_since_added", "1")]
            )
        )
