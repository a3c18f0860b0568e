"""Sustained benchmark: single-event ingest at full speed while a webhook destination keeps up.

cdpd (pinned to core 0) takes single-event `POST /v1/track` from wrk (core 1) for `--duration`
seconds while delivering to a local sink with a webhook destination (batch 100). Every
`--sample` seconds it reads the delivery backlog (messages past the lane's position) from the
outbox with sqlite3, as a person would. Then the bare aiohttp server takes the same load for the
same time: the ratio is cdpd's ingest rate to the bare server's. Delivery keeps up when the
backlog does not grow.

    .venv/bin/python bench/sustained.py [--duration 60] [--connections 64]

Needs wrk (`apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from deliver import Sink, SinkProtocol
from ingest import (
    HERE,
    WRITE_KEY,
    free_port,
    parse_wrk,
    peak_rss_mb,
    run_wrk,
    stop,
    wait_for_port,
)

BATCH_SIZE = 100


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=60, help="seconds of load")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--sample", type=int, default=10, help="seconds between backlog reads")
    args = parser.parse_args()
    return uvloop.run(run(args))


async def run(args: argparse.Namespace) -> int:
    cdpd_rate, p99, backlog, rss, delivered = await cdpd_run(args)
    bare_rate = await bare_run(args)
    print()
    print("| run | events/s | p99 ms | cdpd/bare | backlog samples | delivered | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    samples = " → ".join(f"{b:,}" for b in backlog)
    print(
        f"| cdpd, webhook batch {BATCH_SIZE} | {cdpd_rate:,.0f} | {p99:.1f} "
        f"| {cdpd_rate / bare_rate:.2f} | {samples} | {delivered:,} | {rss:.0f} |"
    )
    print(f"| bare aiohttp | {bare_rate:,.0f} | - | 1.00 | - | - | - |")
    return 0


async def cdpd_run(args: argparse.Namespace) -> tuple[float, float, list[int], float, int]:
    sink = Sink()
    server = await asyncio.get_running_loop().create_server(
        lambda: SinkProtocol(sink), "127.0.0.1", 0
    )
    sink_port = server.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="cdpd-sustained-") as tmp:
        port = free_port()
        config = Path(tmp) / "cdpd.toml"
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\n[logging]\naccess_log = false\n'
            f'[storage]\ndata_dir = "{Path(tmp) / "var"}"\nmin_free_disk_bytes = 0\n'
            f'[[sources]]\nname = "bench"\nwrite_key = "{WRITE_KEY}"\n'
            f'[[destinations]]\nname = "hook"\ntype = "webhook"\n'
            f'url = "http://127.0.0.1:{sink_port}/hook"\nbatch_size = {BATCH_SIZE}\n'
            "concurrency = 4\n"
        )
        proc = await asyncio.to_thread(_start, config, port)
        outbox = Path(tmp) / "var" / "outbox.sqlite3"
        backlog: list[int] = []
        load = asyncio.create_task(
            asyncio.to_thread(run_wrk, port, "/v1/track", 1, args.duration, args.connections)
        )
        began = time.perf_counter()
        while not load.done():
            await asyncio.wait([load], timeout=args.sample)
            backlog.append(_backlog(outbox))
        output = await load
        elapsed = time.perf_counter() - began
        rss = peak_rss_mb(proc.pid)
        stop(proc)
    server.close()
    result = parse_wrk(output, "cdpd", "single", 1, rss)
    print(
        f"cdpd: {result.events_per_s:,.0f} events/s for {elapsed:.0f} s, backlog {backlog},"
        f" delivered {sink.messages:,}",
        file=sys.stderr,
    )
    return result.events_per_s, result.p99_ms, backlog, rss, sink.messages


async def bare_run(args: argparse.Namespace) -> float:
    port = free_port()
    command = [sys.executable, str(HERE / "bare_server.py"), "--port", str(port)]
    proc = await asyncio.to_thread(_start_command, command, port)
    try:
        output = await asyncio.to_thread(
            run_wrk, port, "/v1/track", 1, args.duration, args.connections
        )
    finally:
        stop(proc)
    rate = parse_wrk(output, "bare", "single", 1, 0.0).events_per_s
    print(f"bare: {rate:,.0f} events/s", file=sys.stderr)
    return rate


def _start(config: Path, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "cdpd", "serve", "--config", str(config)]
    return _start_command(command, port)


def _start_command(command: list[str], port: int) -> subprocess.Popen[bytes]:
    """Start a server pinned to core 0 (the load generator runs on core 1)."""
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=HERE.parent,
    )
    wait_for_port(port, proc)
    return proc


def _backlog(outbox: Path) -> int:
    """Messages past the lane's position, read the way README shows."""
    with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT (SELECT coalesce(max(seq), 0) FROM messages) - seq FROM consumers"
            " WHERE name = 'delivery:hook'"
        ).fetchone()
    return int(row[0]) if row else 0


if __name__ == "__main__":
    raise SystemExit(main())
