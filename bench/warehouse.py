"""Warehouse load rate against its ceiling, SQLite and PostgreSQL, in one run.

100,000 mixed messages (tracks of 20 event names whose properties grow from 4 to 24 over the
run, plus identifies and pages) are written straight into an outbox-shaped SQLite file. Then:

- cdpd: `warehouse.loader.sync` loads them into a new SQLite file, and into a new PostgreSQL
  database (batches of 10,000);
- ceiling: the same rows (every row cdpd wrote, already mapped, typed and padded to the union
  of columns) into one plain table with one `executemany` (SQLite) or one COPY (PostgreSQL).
  The PostgreSQL ceiling is COPY as asyncpg does it by default, timestamps as `datetime`; a
  second row measures against a faster ceiling, timestamps as integers through the tuple codec
  that cdpd's sink uses itself, and a third times cdpd's writes alone (the batches prepared
  first, then only their load transactions) against that faster ceiling. Each ceiling's rows
  are built just before it runs and dropped after, so that cdpd never runs beside them
  (holding them made cdpd's load 30 % slower).

Each repetition runs both, cdpd then its ceiling, for each warehouse kind; the table gives the
medians, and the median of each repetition's own ceiling/cdpd ratio (the host is shared and
noisy: ratios measured side by side are steadier than absolute rates).
Rates are warehouse rows per second (a track writes two rows: `tracks` and its event table).
Usage: python bench/warehouse.py [--messages N] [--repeats N] [--dsn postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import sqlite3
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from cdpd import config as cdpd_config
from cdpd.outbox import schema
from cdpd.warehouse import loader
from cdpd.warehouse.batches import Batch, Job, Reading, prepare
from cdpd.warehouse.mapping import Mapper
from cdpd.warehouse.plan import Catalog, catalog_after, plan_load
from cdpd.warehouse.sinks import open_sink
from cdpd.warehouse.sinks.postgres import SQL_TYPES as PG_TYPES
from cdpd.warehouse.sinks.postgres import encode_timestamp as pg_timestamp
from cdpd.warehouse.values import ColumnType, utc_text

EVENTS = [f"Event Number {n}" for n in range(20)]
INTEGER_CEILING = "postgres, integer-timestamp ceiling"
WRITES_ALONE = "postgres, cdpd's writes alone, integer-timestamp ceiling"


def _moment(moment: datetime) -> datetime:
    return moment


def message(n: int, total: int) -> dict[str, Any]:
    received = f"2026-11-28T12:{(n // 6000) % 60:02d}:{(n // 100) % 60:02d}.{n % 1000:03d}Z"
    base = {
        "messageId": str(uuid.UUID(int=n)),
        "userId": f"user-{n % 5000}",
        "receivedAt": received,
        "timestamp": received,
        "sentAt": received,
        "context": {"library": {"name": "analytics-python", "version": "2.3.4"}, "ip": "10.0.0.1"},
    }
    kind = n % 10
    if kind == 0:
        traits = {
            "email": f"u{n % 5000}@example.com",
            "plan": random.choice(["a", "b"]),
            "age": n % 90,
        }
        return {**base, "type": "identify", "traits": traits}
    if kind == 1:
        props = {"path": "/p", "url": "https://example.com/p", "title": "Page"}
        return {**base, "type": "page", "name": "Home", "properties": props}
    width = 4 + 20 * n // total
    props = {f"prop_{k}": (k * n if k % 3 else f"value {k}") for k in range(width)}
    props["price"] = n / 7
    return {**base, "type": "track", "event": EVENTS[n % 20], "properties": props}


def write_outbox(path: Path, total: int) -> None:
    asyncio.run(_create(path))
    encode = msgspec.json.encode
    rows = []
    for n in range(total):
        m = message(n, total)
        rows.append(
            (
                m["messageId"],
                "website",
                m["type"],
                m.get("event"),
                m["userId"],
                None,
                m["receivedAt"],
                encode(m).decode(),
            )
        )
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO messages (message_id, source, type, event, user_id, anonymous_id, "
                "received_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        # As the daemon's outbox stays: its WAL checkpointed and cut to size as it goes.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


async def _create(path: Path) -> None:
    async with schema.connect(path):
        pass


Ceiling = tuple[list[str], list[ColumnType], list[tuple[Any, ...]]]


def ceiling_rows(outbox: Path, encode_timestamp: Any) -> Ceiling:
    """Every row cdpd writes, mapped and typed, padded to one set of columns."""
    with sqlite3.connect(outbox) as conn:
        payloads = conn.execute("SELECT source, payload FROM messages ORDER BY seq").fetchall()
    mapper = Mapper(loaded_at=utc_text(datetime.now(UTC)))
    for source, payload in payloads:
        mapper.add(source, msgspec.json.decode(payload))
    plan = plan_load(mapper.batch(), {}, max_columns=1600, encode_timestamp=encode_timestamp)
    types: dict[str, ColumnType] = {}
    for table in plan.tables:
        for column, column_type in zip(table.columns, table.types, strict=True):
            types.setdefault(column, column_type)
    columns = list(types)
    rows = []
    for table in plan.tables:
        index = [table.columns.index(c) if c in table.columns else None for c in columns]
        for row in table.rows():
            rows.append(tuple(None if i is None else row[i] for i in index))
    return columns, [types[c] for c in columns], rows


def sqlite_ceiling(path: Path, ceiling: Ceiling) -> tuple[int, float]:
    columns, _, rows = ceiling
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        quoted = ", ".join(f'"{c}"' for c in columns)
        conn.execute(f"CREATE TABLE plain ({quoted})")
        sql = f"INSERT INTO plain ({quoted}) VALUES ({', '.join('?' * len(columns))})"
        started = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
        return len(rows), time.perf_counter() - started


async def postgres_ceiling(
    dsn: str, ceiling: Ceiling, table: str, *, integers: bool = False
) -> tuple[int, float]:
    """One COPY of every row; timestamps as datetimes (asyncpg's own codec), or with
    `integers` as microseconds through the same tuple codec cdpd's sink uses."""
    columns, types, rows = ceiling
    conn = await asyncpg.connect(dsn)
    try:
        if integers:
            await conn.set_type_codec(
                "timestamptz",
                schema="pg_catalog",
                encoder=lambda micros: (micros,),
                decoder=lambda wire: wire[0],
                format="tuple",
            )
        definitions = ", ".join(f'"{c}" {PG_TYPES[t]}' for c, t in zip(columns, types, strict=True))
        await conn.execute(f"CREATE TABLE {table} ({definitions})")
        started = time.perf_counter()
        await conn.copy_records_to_table(table, records=rows, columns=columns)
        return len(rows), time.perf_counter() - started
    finally:
        await conn.close()


async def writes_alone(config_text: str, directory: Path, outbox: Path) -> tuple[int, float]:
    """cdpd's writes alone: every batch prepared first, as a sync would (each planned for the
    tables the one before leaves), then only the load transactions timed, through the sink."""
    path = directory / "cdpd.toml"
    path.write_text(config_text)
    config = cdpd_config.load(path)
    (warehouse,) = config.warehouses
    reading = Reading(
        outbox=outbox,
        end_seq=2**62,
        size=loader.BATCH_MESSAGES,
        max_columns=warehouse.max_columns,
        encode_timestamp=pg_timestamp,
    )
    prepared: list[Batch] = []
    catalog: Catalog = {}
    while True:
        after_seq = prepared[-1].last_seq if prepared else 0
        batch = prepare(Job(reading=reading, after_seq=after_seq, catalog=catalog))
        if batch is None:
            break
        prepared.append(batch)
        catalog = catalog_after(catalog, batch.plan)
    async with open_sink(config, warehouse) as sink:
        rows = 0
        started = time.perf_counter()
        for batch in prepared:
            async with sink.load() as load:
                written = await load.apply(batch.plan)
                await load.set_position(batch.last_seq)
            rows += sum(written.values())
        return rows, time.perf_counter() - started


def cdpd_load(config_text: str, directory: Path) -> tuple[int, int, float]:
    path = directory / "cdpd.toml"
    path.write_text(config_text)
    config = cdpd_config.load(path)
    (warehouse,) = config.warehouses
    started = time.perf_counter()
    report = asyncio.run(loader.sync(config, warehouse))
    elapsed = time.perf_counter() - started
    assert report.status == "success", report.error
    return report.messages, sum(report.rows.values()), elapsed


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    random.seed(1)
    runs: dict[str, list[tuple[int, int, float, int, float]]] = {
        "sqlite": [],
        "postgres": [],
        INTEGER_CEILING: [],
        WRITES_ALONE: [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        outbox = directory / "var" / "outbox.sqlite3"
        outbox.parent.mkdir()
        write_outbox(outbox, args.messages)
        base = f'[storage]\ndata_dir = "{outbox.parent}"\n'
        base += '[[sources]]\nname = "website"\nwrite_key = "k"\n'
        # Repetitions interleave cdpd and its ceiling, so drift on a shared host hits both.
        for rep in range(args.repeats):
            path = directory / f"wh{rep}.sqlite3"
            sqlite_toml = base + f'[[warehouses]]\nname = "b"\ntype = "sqlite"\npath = "{path}"\n'
            messages, rows, seconds = cdpd_load(sqlite_toml, directory)
            ceiling_path = directory / f"ceiling{rep}.sqlite3"
            ceiling = sqlite_ceiling(ceiling_path, ceiling_rows(outbox, utc_text))
            runs["sqlite"].append((messages, rows, seconds, *ceiling))

            database = f"cdpd_bench_{secrets.token_hex(4)}"
            asyncio.run(_admin(args.dsn, f'CREATE DATABASE "{database}"'))
            dsn = args.dsn.rsplit("/", 1)[0] + "/" + database
            try:
                pg_toml = base + f'[[warehouses]]\nname = "b"\ntype = "postgres"\ndsn = "{dsn}"\n'
                messages, rows, seconds = cdpd_load(pg_toml, directory)
                ceiling = asyncio.run(postgres_ceiling(dsn, ceiling_rows(outbox, _moment), "plain"))
                runs["postgres"].append((messages, rows, seconds, *ceiling))
                integer_rows = ceiling_rows(outbox, pg_timestamp)
                ceiling = asyncio.run(
                    postgres_ceiling(dsn, integer_rows, "integers", integers=True)
                )
                runs[INTEGER_CEILING].append((messages, rows, seconds, *ceiling))
                asyncio.run(_admin(dsn, "DROP SCHEMA website CASCADE; DROP SCHEMA _cdpd CASCADE"))
                rows, seconds = asyncio.run(writes_alone(pg_toml, directory, outbox))
                runs[WRITES_ALONE].append((messages, rows, seconds, *ceiling))
            finally:
                asyncio.run(_admin(args.dsn, f'DROP DATABASE "{database}" WITH (FORCE)'))
    report(runs)


def report(runs: dict[str, list[tuple[int, int, float, int, float]]]) -> None:
    """Medians over the repetitions; the ratio is the median of each repetition's own ratio."""
    header = ["warehouse", "messages", "rows", "cdpd s", "cdpd rows/s", "ceiling rows"]
    print("| " + " | ".join([*header, "ceiling rows/s", "ceiling/cdpd", "per run"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, reps in runs.items():
        messages, rows, _, ceiling_count, _ = reps[0]
        seconds = statistics.median(r[2] for r in reps)
        ceiling_seconds = statistics.median(r[4] for r in reps)
        ratios = [(r[3] / r[4]) / (r[1] / r[2]) for r in reps]
        print(
            f"| {kind} | {messages:,} | {rows:,} | {seconds:.2f} | {rows / seconds:,.0f} | "
            f"{ceiling_count:,} | {ceiling_count / ceiling_seconds:,.0f} | "
            f"{statistics.median(ratios):.2f}x | {' '.join(f'{r:.2f}' for r in ratios)} |"
        )


if __name__ == "__main__":
    main()
