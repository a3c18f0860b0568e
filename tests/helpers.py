"""Shared test helpers: config files, a real cdpd in-process or as a subprocess, outbox queries."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sqlite3
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from cdpd.model.timestamps import now_ms

WRITE_KEY = "wk_test"
OTHER_WRITE_KEY = "wk_other"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


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


def outbox_path(data_dir: Path) -> Path:
    return data_dir / "outbox.sqlite3"


def query(data_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the outbox the way a person would, with plain sqlite3."""
    with sqlite3.connect(outbox_path(data_dir)) as conn:
        return conn.execute(sql, params).fetchall()


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


async def spawn_cdpd(config_path: Path, env: Mapping[str, str] | None = None) -> Daemon:
    """Start `python -m cdpd serve` and return once it logs the URL it listens on."""
    proc = await asyncio.create_subprocess_exec(
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
        if event.is_set():
            return True
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timers.append((self._now_ms + round(timeout_s * 1000), timer))
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
