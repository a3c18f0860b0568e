"""One bad message fails only itself: a real cdpd takes messages over HTTP, delivers them to a
webhook and loads them into SQLite and PostgreSQL (every warehouse test runs against both).

Text holding U+0000 is stored and delivered as sent; in the warehouses (PostgreSQL cannot store
it) the value goes to the discards table. A number no 64-bit type holds is rejected at ingest; one
that an older cdpd stored is dead for a destination that decodes it (the rest of its batch goes
on) and a discard in the warehouses, never a stuck position. Keys that share a column keep one
documented winner; the others are discards too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest

from cdpd import config as cdpd_config
from cdpd.app import Running, running
from cdpd.warehouse.position import prunable_seq
from tests.helpers import (
    POSTGRES_ADMIN_DSN,
    WRITE_KEY,
    FakeClock,
    WarehouseProbe,
    basic_auth,
    change_beside,
    query,
    rejects,
)
from tests.integration.test_delivery import delivered, hook
from tests.sink import Sink, status

S = "website"
AUTH = {"Authorization": basic_auth(WRITE_KEY)}
# A batch as a client sends it: `\u0000` escapes, a number out of range, good messages.
BATCH = (
    b'{"batch":['
    b'{"type":"track","userId":"u1","event":"Order Completed","messageId":"nul",'
    b'"properties":{"note":"a\\u0000b","total":5}},'
    b'{"type":"track","userId":"u1","event":"Order Completed","messageId":"big",'
    b'"properties":{"total":1e400}},'
    b'{"type":"track","userId":"u1","event":"Order Completed","messageId":"digits",'
    b'"properties":{"total":' + b"9" * 5000 + b"}},"
    b'{"type":"identify","userId":"u\\u0000x","messageId":"who","traits":{"plan":"pro"}},'
    b'{"type":"track","userId":"u1","event":"Order Completed","messageId":"good",'
    b'"properties":{"note":"fine","total":7}}]}'
)


async def post(server: Running, body: bytes) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/v1/batch", data=body, headers=AUTH) as resp,
    ):
        assert resp.status == 200, await resp.text()


ID_ACTION = """
[[destinations.actions]]
name = "ids"
subscribe = 'type = "track"'
[destinations.actions.mapping]
data = { id = { "@path" = "$.messageId" } }
"""


# -- destinations ------------------------------------------------------------------------------


async def test_nul_text_is_delivered_and_out_of_range_numbers_are_rejected(
    make_config: Callable[..., cdpd_config.Config], data_dir: Path
) -> None:
    async with Sink() as sink:
        async with running(make_config(hook("hook", sink.url))) as server:
            await post(server, BATCH)
            await delivered(server.delivery.lanes["hook"], 3)
        received = {m["messageId"]: m for m in sink.messages}
    assert sorted(received) == ["good", "nul", "who"]
    assert received["nul"]["properties"]["note"] == "a\x00b"
    assert received["who"]["userId"] == "u\x00x"
    assert [(code, message_id) for code, _, message_id in rejects(data_dir)] == [
        ("number_out_of_range", "big"),
        ("number_out_of_range", "digits"),
    ]


async def test_a_stored_message_that_cannot_be_decoded_is_dead_and_its_batch_goes_on(
    make_config: Callable[..., cdpd_config.Config], data_dir: Path
) -> None:
    good = b'{"type":"track","userId":"u1","event":"E","messageId":"%s"}'
    async with Sink(default=status(503)) as sink:
        config = make_config(hook("hook", sink.url) + ID_ACTION)  # a mapping decodes the message
        async with running(config, clock=FakeClock()) as server:
            await post(
                server, b'{"batch":[' + b",".join(good % m for m in (b"m1", b"m2", b"m3")) + b"]}"
            )
            await settled(server.delivery.lanes["hook"], attempts=3)
        # What an older cdpd accepted and stored: a number that no decoder reads back.
        (payload,) = query(data_dir, "SELECT payload FROM messages WHERE message_id = 'm2'")[0]
        await _update_payload(data_dir, "m2", payload.replace('"event"', '"n":1e400,"event"'))
        sink.default = status(200)
        clock = FakeClock()
        async with running(config, clock=clock) as server:
            lane = server.delivery.lanes["hook"]
            clock.advance(3600)  # past every first backoff: the three are due together
            await settled(lane, attempts=3)
    assert sorted(m["id"] for m in sink.messages) == ["m1", "m3"]
    assert query(data_dir, "SELECT message_id, state, last_error FROM deliveries ORDER BY seq") == [
        ("m1", "delivered", None),
        (
            "m2",
            "dead",
            "the stored message cannot be decoded: Number out of range - at `$[...]`"
            " (the destination cannot take it as it is)",
        ),
        ("m3", "delivered", None),
    ]


async def settled(lane: Any, *, attempts: int) -> None:
    async with asyncio.timeout(30), lane.stats.recorded:
        await lane.stats.recorded.wait_for(lambda: lane.stats.attempts >= attempts)


# -- warehouses --------------------------------------------------------------------------------


@pytest.fixture
def config(
    make_config: Callable[..., cdpd_config.Config], warehouse: WarehouseProbe
) -> cdpd_config.Config:
    return make_config(warehouse.toml)


@pytest.fixture
async def daemon(config: cdpd_config.Config) -> AsyncIterator[Running]:
    async with running(config) as server:
        await server.warehouses.wait_for_syncs("wh", 1)  # the start-up sync (nothing to load)
        yield server


async def discards(warehouse: WarehouseProbe) -> list[tuple[Any, ...]]:
    return await warehouse.fetch(
        "SELECT table_name, row_id, column_name, column_value, reason "
        f"FROM {warehouse.name(S, 'cdpd_discards')} ORDER BY table_name, row_id, column_name"
    )


async def test_nul_text_is_a_discard_and_the_warehouse_goes_on(
    daemon: Running, config: cdpd_config.Config, warehouse: WarehouseProbe, data_dir: Path
) -> None:
    await post(daemon, BATCH)
    report = await daemon.warehouses.sync_now("wh")
    assert (report.status, report.error, report.messages) == ("success", None, 3)
    rows = await warehouse.rows(S, "order_completed", "id, note, total")
    assert rows == [
        {"id": "good", "note": "fine", "total": 7},
        {"id": "nul", "note": None, "total": 5},
    ]
    assert await warehouse.rows(S, "identifies", "id, plan") == [{"id": "who", "plan": "pro"}]
    assert await warehouse.tables(S) >= {"identifies", "order_completed", "cdpd_discards"}
    assert "users" not in await warehouse.tables(S)  # its only row had no storable id
    *values, (table, row_id, column, whole_row, reason) = await discards(warehouse)
    assert values == [
        ("identifies", "who", "user_id", '"u\\u0000x"', "unstorable_text: U+0000"),
        ("order_completed", "nul", "note", '"a\\u0000b"', "unstorable_text: U+0000"),
    ]
    assert (table, row_id, column) == ("users", '"u\\u0000x"', "id")
    assert reason == "unstorable_text: U+0000 in the id; the row is not loaded"
    assert msgspec.json.decode(whole_row)["plan"] == "pro"
    assert msgspec.json.decode(whole_row)["id"] == "u\x00x"
    assert await prunable_seq(config) == 3


async def test_a_stored_number_out_of_range_is_a_discard_not_a_stuck_position(
    daemon: Running, config: cdpd_config.Config, warehouse: WarehouseProbe, data_dir: Path
) -> None:
    good = b'{"type":"track","userId":"u1","event":"Order Completed","messageId":"%s"}'
    await post(daemon, b'{"batch":[' + b",".join(good % m for m in (b"m1", b"m2", b"m3")) + b"]}")
    # What an older cdpd accepted and stored: numbers that no decoder reads back.
    (payload,) = query(data_dir, "SELECT payload FROM messages WHERE message_id = 'm2'")[0]
    broken = payload.replace('"event"', '"properties":{"total":1e400},"event"')
    await _update_payload(data_dir, "m2", broken)
    report = await daemon.warehouses.sync_now("wh")
    assert (report.status, report.messages) == ("success", 3)
    assert [r["id"] for r in await warehouse.rows(S, "order_completed", "id")] == ["m1", "m3"]
    ((table, row_id, column, value, reason),) = await discards(warehouse)
    assert (table, row_id, column, value) == ("order_completed", "m2", "", broken)
    assert reason == "unreadable_message: Number out of range - at `$[...][...]`"
    assert await prunable_seq(config) == 3


async def _update_payload(data_dir: Path, message_id: str, payload: str) -> None:
    sql = "UPDATE messages SET payload = ? WHERE message_id = ?"
    await change_beside(data_dir, sql, (payload, message_id))  # a daemon may be running


async def test_colliding_column_names_keep_one_winner_and_discard_the_rest(
    daemon: Running, warehouse: WarehouseProbe
) -> None:
    orders = [
        (b"m1", b'{"Order Id":"a1","orderId":"b1","ORDER_ID":"c1"}'),
        (b"m2", b'{"orderId":"b2","ORDER_ID":"c2","Order Id":"a2"}'),
        (b"m3", b'{"order_id":"d3","Order Id":"a3"}'),
    ]
    items = [
        b'{"type":"track","userId":"u1","event":"Order Completed","messageId":"%s","properties":%s}'
        % order
        for order in orders
    ]
    await post(daemon, b'{"batch":[' + b",".join(items) + b"]}")
    report = await daemon.warehouses.sync_now("wh")
    assert (report.status, report.discards) == ("success", 5)
    assert await warehouse.rows(S, "order_completed", "id, order_id") == [
        {"id": "m1", "order_id": "c1"},
        {"id": "m2", "order_id": "c2"},
        {"id": "m3", "order_id": "d3"},
    ]
    assert await discards(warehouse) == [
        ("order_completed", "m1", "Order Id", '"a1"', "name_collision: order_id holds ORDER_ID"),
        ("order_completed", "m1", "orderId", '"b1"', "name_collision: order_id holds ORDER_ID"),
        ("order_completed", "m2", "Order Id", '"a2"', "name_collision: order_id holds ORDER_ID"),
        ("order_completed", "m2", "orderId", '"b2"', "name_collision: order_id holds ORDER_ID"),
        ("order_completed", "m3", "Order Id", '"a3"', "name_collision: order_id holds order_id"),
    ]


@pytest.fixture
def latin1_dsn(postgres_test_dsn: str) -> Iterator[str]:
    """A database whose encoding is LATIN1: it refuses text such as `日本`."""
    name = postgres_test_dsn.rsplit("/", 1)[1] + "_latin1"
    admin(
        f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'"
        " TEMPLATE template0"
    )
    yield postgres_test_dsn.rsplit("/", 1)[0] + f"/{name}"
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def admin(sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:  # this fixture may be set up inside a test's loop
        pool.submit(lambda: asyncio.run(run())).result()


async def test_a_postgresql_database_that_is_not_utf8_is_refused_as_a_whole(
    make_config: Callable[..., cdpd_config.Config], latin1_dsn: str
) -> None:
    toml = f'[[warehouses]]\nname = "wh"\ntype = "postgres"\ndsn = "{latin1_dsn}"\n'
    async with running(make_config(toml)) as server:
        text = "日本".encode()  # LATIN1 has no such characters
        await post(server, b'{"batch":[{"type":"track","userId":"u1","event":"%s"}]}' % text)
        report = await server.warehouses.sync_now("wh")
    assert report.status == "failure"
    assert report.error == (
        "UnusableWarehouse: the database's encoding is LATIN1; cdpd loads only into UTF8"
        " databases (CREATE DATABASE ... ENCODING 'UTF8')"
    )
