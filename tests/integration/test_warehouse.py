"""The warehouse sync end to end: a real cdpd fills the outbox over HTTP, then syncs load it into
a real SQLite file or the local PostgreSQL (every test runs against both)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from cdpd import cli
from cdpd import config as cdpd_config
from cdpd.app import Running, running
from cdpd.outbox import reader
from cdpd.warehouse import batches, loader
from cdpd.warehouse.batches import worker_pool
from cdpd.warehouse.loader import BatchResult
from cdpd.warehouse.naming import DISCARDS_TABLE
from cdpd.warehouse.position import prunable_seq
from cdpd.warehouse.report import SyncReport
from tests.helpers import (
    OTHER_WRITE_KEY,
    WRITE_KEY,
    WarehouseProbe,
    basic_auth,
    change_beside,
    outbox_path,
)

S = "website"  # the schema of the test source "website"


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


async def send(server: Running, *messages: dict[str, Any], key: str = WRITE_KEY) -> None:
    headers = {"Authorization": basic_auth(key)}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/v1/batch", json={"batch": list(messages)}, headers=headers) as r,
    ):
        assert r.status == 200


async def sync(server: Running) -> SyncReport:
    report = await server.warehouses.sync_now("wh")
    assert report.status == "success", report.error
    return report


def track(message_id: str, event: str = "Order Completed", **extra: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": message_id, "userId": "u1", "event": event, **extra}


async def test_segment_layout(daemon: Running, warehouse: WarehouseProbe) -> None:
    await send(
        daemon,
        {"type": "identify", "messageId": "i1", "userId": "u1", "traits": {"email": "a@x"}},
        track("t1", properties={"total": 10, "address": {"city": "Oslo"}, "tags": ["a", "b"]}),
        track("t2", "order_completed"),
        track("t3", "orderCompleted", context={"app": {"version": "1.2"}}),
        {"type": "page", "messageId": "p1", "anonymousId": "a1", "name": "Home"},
        {"type": "screen", "messageId": "s1", "userId": "u1", "name": "Settings"},
        {"type": "group", "messageId": "g1", "userId": "u1", "groupId": "acme", "traits": {"n": 1}},
        {"type": "alias", "messageId": "a1", "userId": "u1", "previousId": "a1"},
        {"type": "track", "messageId": "t4", "userId": "u2", "event": "Signed Up"},
    )
    report = await sync(daemon)
    assert report.messages == 9
    assert await warehouse.tables(S) == {
        "identifies",
        "users",
        "groups",
        "accounts",
        "pages",
        "screens",
        "tracks",
        "aliases",
        "order_completed",
        "signed_up",
    }
    columns = await warehouse.columns(S, "order_completed")
    for standard in ("id", "user_id", "received_at", "sent_at", "timestamp", "uuid_ts"):
        assert standard in columns or standard == "sent_at"
    assert {"event", "event_text", "total", "address_city", "tags", "context_app_version"} <= set(
        columns
    )
    rows = await warehouse.rows(S, "order_completed", "id, event, event_text, tags")
    assert [(r["id"], r["event"], r["event_text"]) for r in rows] == [
        ("t1", "order_completed", "Order Completed"),
        ("t2", "order_completed", "order_completed"),
        ("t3", "order_completed", "orderCompleted"),
    ]
    assert rows[0]["tags"] == '["a","b"]'
    assert "total" not in await warehouse.columns(S, "tracks")
    assert "anonymous_id" not in await warehouse.columns(S, "users")
    assert await warehouse.rows(S, "users", "id, email") == [{"id": "u1", "email": "a@x"}]
    assert await warehouse.rows(S, "accounts", "id, n") == [{"id": "acme", "n": 1}]


async def test_each_source_has_its_own_schema(daemon: Running, warehouse: WarehouseProbe) -> None:
    await send(daemon, track("w1"))
    await send(daemon, track("b1", "Refunded"), key=OTHER_WRITE_KEY)
    await sync(daemon)
    assert "order_completed" in await warehouse.tables("website")
    assert await warehouse.tables("backend") == {"tracks", "refunded"}


async def test_new_properties_add_columns(daemon: Running, warehouse: WarehouseProbe) -> None:
    await send(daemon, track("m1", properties={"a": 1}))
    await sync(daemon)
    await send(daemon, track("m2", properties={"a": 2, "b": "x", "when": "2026-01-01T10:00:00Z"}))
    await sync(daemon)
    columns = await warehouse.columns(S, "order_completed")
    assert columns["b"] == "text"
    assert columns["_when"] in ("timestamp", "timestamp with time zone")  # a reserved word
    assert [r["b"] for r in await warehouse.rows(S, "order_completed", "id, b")] == [None, "x"]


async def test_timestamps_keep_their_instant(daemon: Running, warehouse: WarehouseProbe) -> None:
    when = {"when": "2026-03-01T12:30:45.123+02:00", "then": "1999-12-31T23:59:59.5Z"}
    await send(daemon, track("m1", properties=when))
    await sync(daemon)
    table = warehouse.name(S, "order_completed")
    if warehouse.kind == "postgres":
        utc = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        sql = f"SELECT {utc.format('_when')}, {utc.format('_then')} FROM {table}"
    else:
        sql = f"SELECT _when, _then FROM {table}"
    assert await warehouse.fetch(sql) == [
        ("2026-03-01T10:30:45.123000Z", "1999-12-31T23:59:59.500000Z")
    ]
    # A time whose UTC date has no year from 1 to 9999 is kept in the discards table.
    await send(daemon, track("m2", properties={"when": "9999-12-31T23:30:00-01:00"}))
    report = await sync(daemon)
    assert report.discards == 1
    discards = f"SELECT row_id, column_name, reason FROM {warehouse.name(S, DISCARDS_TABLE)}"
    assert await warehouse.fetch(discards) == [
        ("m2", "_when", "type_conflict: column is timestamp")
    ]


async def test_type_conflicts_widen_or_go_to_discards(
    daemon: Running, warehouse: WarehouseProbe
) -> None:
    await send(daemon, track("m1", properties={"n": 1, "s": "x", "f": 1.5, "ok": True}))
    await sync(daemon)
    await send(
        daemon,
        track("m2", properties={"n": 2.0, "s": 5, "f": 3, "ok": False}),  # all widen losslessly
        track("m3", properties={"n": "many", "s": True, "f": "x", "ok": "yes"}),
    )
    await sync(daemon)
    rows = {r["id"]: r for r in await warehouse.rows(S, "order_completed", "id, n, s, f, ok")}
    assert rows["m2"]["n"] == 2
    assert rows["m2"]["s"] == "5"
    assert rows["m2"]["f"] == 3.0
    assert rows["m2"]["ok"] in (False, 0)
    assert rows["m3"] == {"id": "m3", "n": None, "s": "true", "f": None, "ok": None}
    discards = await warehouse.fetch(
        f"SELECT table_name, row_id, column_name, column_value, reason "
        f"FROM {warehouse.name(S, 'cdpd_discards')} ORDER BY column_name"
    )
    assert discards == [
        ("order_completed", "m3", "f", '"x"', "type_conflict: column is float"),
        ("order_completed", "m3", "n", '"many"', "type_conflict: column is integer"),
        ("order_completed", "m3", "ok", '"yes"', "type_conflict: column is boolean"),
    ]
    assert (await warehouse.columns(S, "order_completed"))["n"] in ("bigint",)


async def test_users_keep_the_latest_non_null_traits(
    daemon: Running, warehouse: WarehouseProbe
) -> None:
    identify = {"type": "identify", "userId": "u1"}
    await send(daemon, {**identify, "messageId": "i1", "traits": {"plan": "pro", "email": "a@x"}})
    await sync(daemon)
    await send(daemon, {**identify, "messageId": "i2", "traits": {"plan": "team", "email": None}})
    await send(daemon, {**identify, "messageId": "i3", "traits": {"seats": 3}})
    await sync(daemon)
    assert await warehouse.rows(S, "users", "id, plan, email, seats") == [
        {"id": "u1", "plan": "team", "email": "a@x", "seats": 3}
    ]
    assert await warehouse.count(S, "identifies") == 3


async def test_resync_and_duplicates_load_nothing_twice(
    daemon: Running, warehouse: WarehouseProbe, data_dir: Path
) -> None:
    await send(daemon, *[track(f"m{n}") for n in range(20)])
    first = await sync(daemon)
    again = await sync(daemon)
    assert (first.messages, again.messages) == (20, 0)
    # The same messageId again after the dedup window is stored twice in the outbox; the
    # warehouse keeps one row.
    await change_beside(data_dir, "UPDATE messages SET received_at = '2000-01-01T00:00:00.000Z'")
    await send(daemon, track("m1"))
    assert (await sync(daemon)).messages == 1
    assert await warehouse.count(S, "tracks") == 20
    assert await warehouse.count(S, "order_completed") == 20


async def test_a_batch_of_loaded_and_new_ids_adds_only_the_new_rows(
    daemon: Running, warehouse: WarehouseProbe, data_dir: Path
) -> None:
    identify = {"type": "identify", "userId": "u1"}
    await send(
        daemon,
        *[track(f"m{n}", properties={"n": n}) for n in range(3)],
        {**identify, "messageId": "i1", "traits": {"plan": "pro"}},
    )
    await sync(daemon)
    # Past the dedup window: m1 and m2 come again, with other values and a new column.
    await change_beside(data_dir, "UPDATE messages SET received_at = '2000-01-01T00:00:00.000Z'")
    await send(
        daemon,
        *[track(f"m{n}", properties={"n": n + 100, "extra": "x"}) for n in range(1, 5)],
        {**identify, "messageId": "i2", "traits": {"seats": 2}},
        {"type": "identify", "userId": "u2", "messageId": "i3", "traits": {"plan": "team"}},
    )
    report = await sync(daemon)
    assert report.rows[f"{S}.tracks"] == report.rows[f"{S}.order_completed"] == 2
    assert await warehouse.rows(S, "order_completed", "id, n, extra") == [
        {"id": "m0", "n": 0, "extra": None},
        {"id": "m1", "n": 1, "extra": None},
        {"id": "m2", "n": 2, "extra": None},
        {"id": "m3", "n": 103, "extra": "x"},
        {"id": "m4", "n": 104, "extra": "x"},
    ]
    assert await warehouse.rows(S, "users", "id, plan, seats") == [
        {"id": "u1", "plan": "pro", "seats": 2},
        {"id": "u2", "plan": "team", "seats": None},
    ]


def _trigger(warehouse: WarehouseProbe, table: str) -> tuple[str, str]:
    if warehouse.kind == "sqlite":
        create = (
            f'CREATE TRIGGER boom BEFORE INSERT ON "{S}__{table}" '
            "BEGIN SELECT RAISE(ABORT, 'boom'); END;"
        )
        return create, "DROP TRIGGER boom;"
    create = (
        f"CREATE FUNCTION {S}.boom() RETURNS trigger LANGUAGE plpgsql "
        "AS $$BEGIN RAISE EXCEPTION 'boom'; END$$; "
        f"CREATE TRIGGER boom BEFORE INSERT ON {S}.{table} "
        f"FOR EACH ROW EXECUTE FUNCTION {S}.boom();"
    )
    return create, f"DROP TRIGGER boom ON {S}.{table};"


async def test_a_load_that_fails_midway_rolls_back_and_reruns_exactly_once(
    daemon: Running, warehouse: WarehouseProbe, config: cdpd_config.Config
) -> None:
    (wh,) = config.warehouses
    await send(daemon, track("m0", "Refunded"))
    await sync(daemon)
    create, drop = _trigger(warehouse, "refunded")
    await warehouse.execute(create)
    messages = [track(f"m{n}", "Order Completed" if n % 2 else "Refunded") for n in range(1, 41)]
    await send(daemon, *messages)
    failed = await loader.sync(config, wh, batch_messages=10)
    # The first batch fails after it created `order_completed` and wrote `tracks` rows: all of
    # it is rolled back.
    assert failed.status == "failure"
    assert "boom" in (failed.error or "")
    assert failed.position == 1
    assert await warehouse.count(S, "tracks") == 1
    assert "order_completed" not in await warehouse.tables(S)
    await warehouse.execute(drop)
    rerun = await loader.sync(config, wh, batch_messages=10)
    assert (rerun.status, rerun.messages, rerun.position) == ("success", 40, 41)
    assert await warehouse.count(S, "tracks") == 41
    assert await warehouse.count(S, "refunded") == 21
    assert await warehouse.count(S, "order_completed") == 20


async def test_a_cancelled_sync_rolls_back_its_batch(
    daemon: Running, warehouse: WarehouseProbe, config: cdpd_config.Config
) -> None:
    (wh,) = config.warehouses
    await send(daemon, *[track(f"m{n}") for n in range(50)])
    batches: list[BatchResult] = []

    async def cancel_after_first(batch: BatchResult) -> None:
        batches.append(batch)
        task.cancel()  # delivered at the next await: inside the second batch's transaction

    task = asyncio.create_task(
        loader.sync(config, wh, batch_messages=10, on_batch=cancel_after_first)
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(batches) == 1
    assert await warehouse.count(S, "tracks") == 10
    report = await loader.sync(config, wh, batch_messages=10)
    assert (report.messages, report.position) == (40, 50)
    assert await warehouse.count(S, "tracks") == 50


async def test_racing_syncs_load_each_message_once(
    daemon: Running, warehouse: WarehouseProbe, config: cdpd_config.Config
) -> None:
    (wh,) = config.warehouses
    await send(daemon, *[track(f"m{n}", f"Event {n % 3}") for n in range(120)])
    reports = await asyncio.gather(
        loader.sync(config, wh, batch_messages=15), loader.sync(config, wh, batch_messages=15)
    )
    assert [r.status for r in reports] == ["success", "success"]
    assert sum(r.messages for r in reports) == 120
    assert await warehouse.count(S, "tracks") == 120
    assert sum([await warehouse.count(S, f"event_{n}") for n in range(3)]) == 120


async def test_racing_syncs_plan_against_the_columns_the_other_created(
    daemon: Running, warehouse: WarehouseProbe, config: cdpd_config.Config
) -> None:
    # Between one sync's batches the other may load the next batch, or add the columns it
    # needs: each batch is planned against the columns its own transaction finds.
    (wh,) = config.warehouses
    await send(daemon, *[track(f"m{n:03}", properties={f"p{n // 7}": n}) for n in range(140)])
    reports = await asyncio.gather(
        loader.sync(config, wh, batch_messages=10), loader.sync(config, wh, batch_messages=10)
    )
    assert [r.status for r in reports] == ["success", "success"]
    assert sum(r.messages for r in reports) == 140
    assert {f"p{k}" for k in range(20)} <= (await warehouse.columns(S, "order_completed")).keys()
    rows = await warehouse.rows(S, "order_completed", "id, p5, p19")
    assert len(rows) == 140
    assert rows[35] == {"id": "m035", "p5": 35, "p19": None}
    assert rows[139] == {"id": "m139", "p5": None, "p19": 139}


async def test_a_column_added_between_batches_is_planned_for(
    daemon: Running, warehouse: WarehouseProbe, config: cdpd_config.Config
) -> None:
    # Someone else adds, as text, the column the second batch would create as an integer:
    # the batch is planned against the column that is there.
    (wh,) = config.warehouses
    await send(
        daemon, *[track(f"m{n:02}", properties={"a" if n < 10 else "b": n}) for n in range(20)]
    )

    async def add_column(batch: BatchResult) -> None:
        if batch.last_seq == 10:
            await warehouse.execute(
                f"ALTER TABLE {warehouse.name(S, 'order_completed')} ADD b TEXT"
            )

    report = await loader.sync(config, wh, batch_messages=10, on_batch=add_column)
    assert (report.status, report.messages) == ("success", 20)
    assert (await warehouse.columns(S, "order_completed"))["b"] == "text"
    rows = await warehouse.rows(S, "order_completed", "id, a, b")
    assert rows[9] == {"id": "m09", "a": 9, "b": None}
    assert rows[15] == {"id": "m15", "a": None, "b": "15"}


def _varied_messages() -> list[dict[str, Any]]:
    """Every kind of message, over several batches: columns that grow, nested objects, arrays,
    type conflicts, reserved names, traits merged across batches."""
    messages: list[dict[str, Any]] = []
    for n in range(60):
        properties = {f"p{k}": k * n for k in range(n // 10 + 1)}
        properties |= {"nested": {"deep": {"x": n}}, "tags": [n, "t"], "event": "dropped"}
        properties["amount"] = n if n % 7 else f"n/a {n}"  # an integer column, then text
        messages.append(track(f"t{n:02}", f"Event {n % 3}", properties=properties))
        if n % 5 == 0:
            traits = {"plan": f"plan {n}", "seats": n} if n % 10 else {"email": f"{n}@x"}
            messages.append(
                {"type": "identify", "messageId": f"i{n}", "userId": "u1", "traits": traits}
            )
        if n % 12 == 0:
            messages.append({"type": "page", "messageId": f"p{n}", "userId": "u1", "name": "Home"})
            messages.append(
                {
                    "type": "group",
                    "messageId": f"g{n}",
                    "userId": "u1",
                    "groupId": "acme",
                    "traits": {"size": n},
                }
            )
    return messages


async def _contents(warehouse: WarehouseProbe) -> dict[str, list[dict[str, Any]]]:
    """Every table of the schema, rows by id, without the columns that hold the load's time."""
    contents = {}
    for table in sorted(await warehouse.tables(S) - {DISCARDS_TABLE}):
        rows = await warehouse.rows(S, table)
        for row in rows:
            for column in ("uuid_ts", "loaded_at", "received_at"):
                row.pop(column, None)
        contents[table] = rows
    discards = (
        "SELECT table_name, row_id, column_name, column_value, reason FROM {} ORDER BY 1, 2, 3"
    )
    contents[DISCARDS_TABLE] = await warehouse.fetch(
        discards.format(warehouse.name(S, DISCARDS_TABLE))
    )
    return contents


def _note_children(children: set[int]) -> Callable[[BatchResult], Awaitable[None]]:
    """A batch hook that notes the child processes started since it was made: a sync's worker
    is one (a worker of an earlier sync may still be finishing its last batch)."""
    earlier = {child.pid for child in multiprocessing.active_children()}

    async def note(batch: BatchResult) -> None:
        alive = {child.pid for child in multiprocessing.active_children()}
        children.update(pid for pid in alive - earlier if pid)

    return note


async def test_a_worker_process_loads_what_a_thread_loads(
    daemon: Running, warehouse: WarehouseProbe, config: cdpd_config.Config
) -> None:
    (wh,) = config.warehouses
    await send(daemon, *_varied_messages())
    loaded = []
    for worker in (False, True):
        await warehouse.empty()
        children: set[int] = set()
        report = await loader.sync(
            config, wh, batch_messages=9, worker=worker, on_batch=_note_children(children)
        )
        assert (report.status, report.messages, report.discards) == ("success", 82, 9)
        assert bool(children) is worker
        loaded.append(await _contents(warehouse))
    assert loaded[0] == loaded[1]
    users = loaded[1]["users"]
    assert [(u["id"], u["email"], u["plan"], u["seats"]) for u in users] == [
        ("u1", "50@x", "plan 55", 55)
    ]
    assert len(loaded[1]["event_0"]) == 20
    assert {"p0", "p5", "nested_deep_x", "tags", "amount"} <= loaded[1]["event_2"][-1].keys()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_sync_worker_leaves_signals_to_the_daemon(sig: signal.Signals) -> None:
    # Ctrl-C reaches the whole process group and systemd's SIGTERM the whole service: the
    # daemon handles them. A KeyboardInterrupt in the worker would come back as its batch's
    # result, out of the daemon's event loop.
    pool = worker_pool(2, 1, True)
    assert pool is not None
    try:
        pid = pool.submit(os.getpid).result(timeout=30)
        slow = pool.submit(time.sleep, 1.0)
        time.sleep(0.3)
        os.kill(pid, sig)
        assert slow.result(timeout=30) is None
    finally:
        pool.shutdown()


async def test_without_a_worker_process_a_sync_prepares_in_a_thread(
    daemon: Running,
    warehouse: WarehouseProbe,
    config: cdpd_config.Config,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_semaphores(*args: Any, **kwargs: Any) -> None:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(batches, "ProcessPoolExecutor", no_semaphores)
    (wh,) = config.warehouses
    await send(daemon, *[track(f"m{n:02}") for n in range(30)])
    with capture_logs() as logs:
        report = await loader.sync(config, wh, batch_messages=10, worker=True)
    assert (report.status, report.messages) == ("success", 30)
    assert "warehouse_worker_unavailable" in {entry["event"] for entry in logs}
    assert await warehouse.count(S, "order_completed") == 30


async def test_a_lost_worker_process_leaves_the_rest_to_a_thread(
    daemon: Running, warehouse: WarehouseProbe, config: cdpd_config.Config
) -> None:
    (wh,) = config.warehouses
    await send(daemon, *[track(f"m{n:02}", properties={f"p{n // 10}": n}) for n in range(60)])

    async def kill_the_worker(batch: BatchResult) -> None:
        if batch.first_seq == 1:
            for child in multiprocessing.active_children():
                if child.pid:
                    os.kill(child.pid, signal.SIGKILL)

    with capture_logs() as logs:
        report = await loader.sync(
            config, wh, batch_messages=10, worker=True, on_batch=kill_the_worker
        )
    assert (report.status, report.messages) == ("success", 60)
    assert "warehouse_worker_lost" in {entry["event"] for entry in logs}
    assert await warehouse.count(S, "order_completed") == 60
    rows = await warehouse.rows(S, "order_completed", "id, p0, p5")
    assert (rows[0], rows[59]) == (
        {"id": "m00", "p0": 0, "p5": None},
        {"id": "m59", "p0": None, "p5": 59},
    )


async def test_hostile_names_are_only_names(daemon: Running, warehouse: WarehouseProbe) -> None:
    hostile = 'x"; DROP TABLE users; --'
    await send(
        daemon,
        {"type": "identify", "messageId": "i1", "userId": "u1", "traits": {"plan": "pro"}},
        track("m1", hostile, properties={'a"b': 1, "c'); DROP TABLE tracks; --": 2, "é": 3}),
        track("m2", "select", properties={"from": 1, "2fa": True, "x" * 100: "long"}),
        track("m3", "Tracks"),
    )
    await sync(daemon)
    tables = await warehouse.tables(S)
    assert {"users", "tracks", "x_drop_table_users", "_select", "_tracks"} <= tables
    assert set(await warehouse.columns(S, "x_drop_table_users")) >= {"a_b", "c_drop_table_tracks"}
    columns = await warehouse.columns(S, "_select")
    assert {"_from", "_2fa"} <= set(columns)
    assert max(len(c) for c in columns) == 63
    assert await warehouse.count(S, "users") == 1
    assert await warehouse.count(S, "tracks") == 3


async def test_the_column_limit_is_kept_and_logged(
    make_config: Callable[..., cdpd_config.Config], warehouse: WarehouseProbe
) -> None:
    toml = warehouse.toml.replace("interval_s = 3600", "interval_s = 3600\nmax_columns = 20")
    async with running(make_config(toml)) as server:
        await server.warehouses.wait_for_syncs("wh", 1)
        await send(server, track("m1", properties={f"p{n:02d}": n for n in range(30)}))
        with capture_logs() as logs:
            report = await sync(server)
    columns = await warehouse.columns(S, "order_completed")
    assert len(columns) == 20
    assert "received_at" in columns  # standard columns come first
    assert report.discards == 30 - len([c for c in columns if c.startswith("p")])
    (limit,) = [line for line in logs if line["event"] == "warehouse_column_limit"]
    assert limit["table"] == "order_completed"


async def test_cli_sync_and_status(
    daemon: Running,
    warehouse: WarehouseProbe,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await send(daemon, track("m1"), track("m2", "Signed Up"))
    config = str(tmp_path / "cdpd.toml")
    assert await asyncio.to_thread(cli.main, ["warehouse", "sync", "wh", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "success, 2 messages loaded, position 2" in out
    assert "website.signed_up" in out
    assert await asyncio.to_thread(cli.main, ["warehouse", "status", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "position  2 (outbox last seq 2; 0 to load)" in out
    assert "lease" not in out  # one process loads every warehouse
    assert "website.tracks" in out
    assert await asyncio.to_thread(cli.main, ["warehouse", "sync", "nope", "--config", config]) == 2


async def test_periodic_sync_and_load_position(
    make_config: Callable[..., cdpd_config.Config], warehouse: WarehouseProbe
) -> None:
    config = make_config(warehouse.toml.replace("interval_s = 3600", "interval_s = 0.05"))
    assert await prunable_seq(config) == 0
    async with running(config) as server:
        await send(server, track("m1"), track("m2"))
        reports = await server.warehouses.wait_for_syncs("wh", 3)
    assert sum(r.messages for r in reports) == 2
    assert await prunable_seq(config) == 2


async def test_the_outbox_lists_each_warehouse_among_its_consumers(
    daemon: Running, data_dir: Path
) -> None:
    await send(daemon, *[track(f"m{n}") for n in range(5)])
    await sync(daemon)
    lags = {lag.name: lag for lag in (await reader.stats(outbox_path(data_dir))).consumers}
    assert lags["warehouse:wh"].kind == "warehouse"
    assert lags["warehouse:wh"].seq == 5
    assert lags["warehouse:wh"].messages_behind == 0
