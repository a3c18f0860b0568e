"""Shared test helpers: config files, a real cdpd in-process or as a subprocess, outbox queries."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from cdpd.model.timestamps import now_ms

WRITE_KEY = "wk_test"
OTHER_WRITE_KEY = "wk_other"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def require_broker(name: str, address: tuple[str, int]) -> tuple[str, int]:
    """Skip when a broker is not listening on a user's machine; under CI=true, fail."""
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError as exc:
        reason = f"{name} is not reachable at {address[0]}:{address[1]}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: .ci/run starts it; the broker tests need it)")
        pytest.skip(reason)
    return address


def basic_auth(key: str, *, colon: bool = True) -> str:
    raw = f"{key}:" if colon else key
    return "Basic " + base64.b64encode(raw.encode()).decode()


def config_text(data_dir: Path, extra: str = "", *, listen: str = "127.0.0.1:0") -> str:
    """A complete TOML config; `extra` adds keys to [server]/[storage] via whole sections."""
    return (
        f'[server]\nlisten = "{listen}"\n'
        f'[storage]\ndata_dir = "{data_dir}"\nmin_free_disk_bytes = 0\n'
        f'[[sources]]\nname = "website"\nwrite_key = "{WRITE_KEY}"\n'
        f'[[sources]]\nname = "backend"\nwrite_key = "{OTHER_WRITE_KEY}"\n'
        f'[[sources]]\nname = "retired"\nwrite_key = "wk_retired"\nenabled = false\n'
        f"{extra}"
    )


def engage_toml(sink_url: str) -> str:
    """[identity] (space `main`, access token `tok`), Engage, and a webhook destination `crm`
    at `sink_url` for audiences to send to."""
    return f"""
[identity]
space = "main"
access_tokens = ["tok"]

[engage]
space_id = "main"

[[destinations]]
name = "crm"
type = "webhook"
url = "{sink_url}"
"""


def audience_toml(key: str, query: str, **sends: bool) -> str:
    """An audience that sends to `crm`; `sends` says what (send_track=True, ...)."""
    flags = "".join(f"{name} = {str(on).lower()}\n" for name, on in sends.items())
    return (
        f'\n[[audiences]]\nkey = "{key}"\nquery = "{query}"\n'
        f'[[audiences.destinations]]\nname = "crm"\n{flags}'
    )


def config_file(tmp_path: Path, data_dir: Path, extra: str = "") -> Path:
    """Write a complete config (see `config_text`) to tmp_path/cdpd.toml and return its path."""
    path = tmp_path / "cdpd.toml"
    path.write_text(config_text(data_dir, extra))
    return path


def outbox_path(data_dir: Path) -> Path:
    return data_dir / "outbox.sqlite3"


def query(data_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the outbox the way a person would, with plain sqlite3."""
    with sqlite3.connect(outbox_path(data_dir)) as conn:
        return conn.execute(sql, params).fetchall()


async def change_beside(data_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Change the outbox beside a daemon running in this process. From a thread: waiting on
    the event loop for the write lock would stop the daemon's own transaction that holds it
    (a consumer's, between two of its statements) until sqlite3 gives up, 5 s later."""
    await asyncio.to_thread(query, data_dir, sql, params)


def stored_payloads(data_dir: Path) -> list[dict[str, Any]]:
    rows = query(data_dir, "SELECT payload FROM messages ORDER BY seq")
    return [msgspec.json.decode(row[0]) for row in rows]


def rejects(data_dir: Path) -> list[tuple[str, str, str | None]]:
    return query(data_dir, "SELECT reason_code, reason, message_id FROM rejects ORDER BY id")


@dataclass
class Daemon:
    """`cdpd serve` running as a child process."""

    proc: asyncio.subprocess.Process
    url: str
    log_lines: list[dict[str, Any]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, timeout_s)
        return code


async def spawn_cdpd(
    config_path: Path, env: Mapping[str, str] | None = None, prefix: Sequence[str] = ()
) -> Daemon:
    """Start `python -m cdpd serve` (after `prefix`, a command that runs it) and return once it
    logs the URL it listens on."""
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "cdpd",
        "serve",
        "--config",
        str(config_path),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=PROJECT_ROOT,
    )
    assert proc.stdout is not None
    lines: list[dict[str, Any]] = []
    while True:
        raw = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not raw:
            raise RuntimeError(f"cdpd exited before listening (code {await proc.wait()})")
        line = msgspec.json.decode(raw)
        lines.append(line)
        if line.get("event") == "listening":
            break
    daemon = Daemon(proc=proc, url=line["url"], log_lines=lines)
    daemon._reader = asyncio.create_task(_collect_lines(proc, lines))
    return daemon


async def post_tracks(url: str, count: int, per_request: int = 500) -> None:
    """Post track messages m0, m1, ... (user u<n>, event "E") to the cdpd at `url`, in batches
    of `per_request`; each batch must be acknowledged."""
    headers = {"Authorization": basic_auth(WRITE_KEY)}
    async with aiohttp.ClientSession() as http:
        for start in range(0, count, per_request):
            batch = [
                {"type": "track", "userId": f"u{n}", "event": "E", "messageId": f"m{n}"}
                for n in range(start, min(start + per_request, count))
            ]
            body = msgspec.json.encode({"batch": batch})
            async with http.post(f"{url}/v1/batch", data=body, headers=headers) as resp:
                assert resp.status == 200


async def _collect_lines(proc: asyncio.subprocess.Process, lines: list[dict[str, Any]]) -> None:
    assert proc.stdout is not None
    async for raw in proc.stdout:
        lines.append(msgspec.json.decode(raw))


class FakeClock:
    """Delivery's clock under the test's control: time moves only when `advance` is called."""

    def __init__(self, start_ms: int | None = None) -> None:
        self._now_ms = now_ms() if start_ms is None else start_ms
        self._timers: list[tuple[int, asyncio.Future[None]]] = []

    def now_ms(self) -> int:
        return self._now_ms

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        return await self.wait_until(event, self._now_ms + round(timeout_s * 1000))

    async def wait_until(self, event: asyncio.Event, at_ms: int) -> bool:
        if event.is_set():
            return True
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timers.append((at_ms, timer))
        self._fire()
        waiting = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiting, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            timer.cancel()
            self._timers = [(at, t) for at, t in self._timers if t is not timer]
        return event.is_set()

    def advance(self, seconds: float) -> None:
        self._now_ms += round(seconds * 1000)
        self._fire()

    def _fire(self) -> None:
        for at, timer in self._timers:
            if at <= self._now_ms and not timer.done():
                timer.set_result(None)


# -- warehouses --------------------------------------------------------------------------------


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class WarehouseProbe:
    """Reads a warehouse the way a person would: plain sqlite3, or asyncpg with plain SQL.
    Tables are named (schema, table); the SQLite file names them `<schema>__<table>`."""

    kind: str
    toml: str  # the [[warehouses]] entry, named "wh"
    sqlite_path: Path | None = None
    dsn: str | None = None

    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if self.sqlite_path is not None:
            with sqlite3.connect(self.sqlite_path) as conn:
                return conn.execute(sql.replace("$", "?"), params).fetchall()
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            return [tuple(row) for row in await conn.fetch(sql, *params)]
        finally:
            await conn.close()

    def name(self, schema: str, table: str) -> str:
        quoted = [part.replace('"', '""') for part in (schema, table)]
        if self.sqlite_path is not None:
            return f'"{quoted[0]}__{quoted[1]}"'
        return f'"{quoted[0]}"."{quoted[1]}"'

    async def tables(self, schema: str) -> set[str]:
        if self.sqlite_path is not None:
            rows = await self.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
            prefix = schema + "__"
            return {r[0][len(prefix) :] for r in rows if r[0].startswith(prefix)}
        rows = await self.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
        return {r[0] for r in rows}

    async def columns(self, schema: str, table: str) -> dict[str, str]:
        """Column name -> declared type, lowercased."""
        if self.sqlite_path is not None:
            rows = await self.fetch(
                "SELECT name, type FROM pragma_table_info($1)", f"{schema}__{table}"
            )
        else:
            rows = await self.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = $1 AND table_name = $2",
                schema,
                table,
            )
        return {name: kind.lower() for name, kind in rows}

    async def rows(self, schema: str, table: str, columns: str = "*") -> list[dict[str, Any]]:
        """Rows as dicts, ordered by id."""
        names = list((await self.columns(schema, table)).keys()) if columns == "*" else None
        sql = f"SELECT {columns} FROM {self.name(schema, table)} ORDER BY id"
        result = await self.fetch(sql)
        keys = names or [c.strip().strip('"') for c in columns.split(",")]
        return [dict(zip(keys, row, strict=True)) for row in result]

    async def count(self, schema: str, table: str) -> int:
        ((n,),) = await self.fetch(f"SELECT count(*) FROM {self.name(schema, table)}")
        return int(n)

    async def empty(self) -> None:
        """Drop everything loaded so far: a SQLite file goes, a PostgreSQL database keeps only
        `public`, so that the next sync starts from an empty warehouse."""
        if self.sqlite_path is not None:
            await asyncio.to_thread(_remove_database, self.sqlite_path)
            return
        schemas = await self.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
            "AND nspname NOT IN ('information_schema', 'public')"
        )
        for (schema,) in schemas:
            await self.execute(f'DROP SCHEMA "{schema}" CASCADE')

    async def execute(self, sql: str) -> None:
        """Run DDL on the warehouse (a test's trigger, for instance)."""
        if self.sqlite_path is not None:
            with sqlite3.connect(self.sqlite_path) as conn:
                conn.executescript(sql)
            return
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


def delivery_statuses(data_dir: Path, destination: str) -> list[Any]:
    """Where each message owed to `destination` stands, as the delivery store says (the config
    is the one the test wrote beside the data folder)."""
    from cdpd import config as cdpd_config
    from cdpd.delivery.service import routing_rule
    from cdpd.delivery.store import RoutingRule, SqliteDeliveryStore

    path = data_dir.parent / "cdpd.toml"
    configured = cdpd_config.load(path).destinations if path.exists() else []
    found = [routing_rule(d) for d in configured if d.name == destination]
    rule = found[0] if found else RoutingRule(destination, catalog_name=destination)

    async def read() -> list[Any]:
        async def unused(_: Any) -> Any:
            raise AssertionError("reading only")

        store = SqliteDeliveryStore(unused, outbox_path(data_dir))
        return await store.statuses(rule)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read()).result()


def destination_names(data_dir: Path) -> list[str]:
    from cdpd import config as cdpd_config

    path = data_dir.parent / "cdpd.toml"
    return [d.name for d in cdpd_config.load(path).destinations] if path.exists() else []
