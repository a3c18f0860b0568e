"""Backlog benchmark: a destination that starts a million messages behind.

Writes N ~800-byte track messages straight into a fresh outbox (as ingest stores them), puts a
webhook destination's lane at the start of the outbox, then starts cdpd (pinned to core 0) and
times the delivery of the whole backlog to a local sink (core 1) in batches of 100. Prints
events/s and cdpd's peak RSS (VmHWM): the lane reads ahead a bounded window, so memory must not
grow with the backlog.

    .venv/bin/python bench/backlog.py [--messages 1000000] [--batch-size 100]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from deliver import EVENT, Sink, SinkProtocol, _config, _start_cdpd
from ingest import free_port, peak_rss_mb, stop

from cdpd.model.timestamps import format_ms, now_ms
from cdpd.outbox import schema


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    return uvloop.run(run(args))


async def run(args: argparse.Namespace) -> int:
    sink = Sink(expect=args.messages)
    server = await asyncio.get_running_loop().create_server(
        lambda: SinkProtocol(sink), "127.0.0.1", 0
    )
    sink_port = server.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="cdpd-backlog-") as tmp:
        port = free_port()
        config = _config(Path(tmp), port, (sink_port, args.concurrency, args.batch_size))
        outbox = Path(tmp) / "var" / "outbox.sqlite3"
        began = time.perf_counter()
        await fill(outbox, args.messages)
        print(
            f"wrote {args.messages:,} messages in {time.perf_counter() - began:.0f} s",
            file=sys.stderr,
        )
        proc = await _start_cdpd(config, port)
        await asyncio.wait_for(sink.complete.wait(), 3600)
        rss = peak_rss_mb(proc.pid)
        stop(proc)
    server.close()
    rate = args.messages / (sink.last_at - sink.first_at)
    print("| backlog | batch | events/s | peak RSS MB |")
    print("|---|---|---|---|")
    print(f"| {args.messages:,} | {args.batch_size} | {rate:,.0f} | {rss:.0f} |")
    return 0


async def fill(outbox: Path, count: int) -> None:
    async with schema.connect(outbox):
        pass  # creates the file at the current schema
    at = format_ms(now_ms())
    with sqlite3.connect(outbox) as conn:
        for start in range(0, count, 50_000):
            rows = [
                (f"bl-{n}", "bench", "track", "Order Completed", f"user-{n % 1000}", None, at,
                 EVENT % (n % 1000, "bl", n))
                for n in range(start, min(count, start + 50_000))
            ]  # fmt: skip
            conn.executemany(
                "INSERT INTO messages (message_id, source, type, event, user_id, anonymous_id,"
                " received_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        conn.execute(
            "INSERT INTO consumers (name, kind, seq, updated_at) VALUES ('delivery:hook',"
            " 'delivery', 0, ?)",
            (at,),
        )


if __name__ == "__main__":
    raise SystemExit(main())
