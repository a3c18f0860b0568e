"""What the live debugger costs on the JetStream backend: a person watching one source reads the
messages stream's tail (every source's messages) and keeps that source's. This publishes a
backlog to a three-server cluster on loopback, half of it from the watched source, then reads it
through the debugger's feed as a watcher would: messages read per second and cdpd CPU per 1,000
messages read (the cluster's own cost is on its servers).

    .venv/bin/python bench/cluster_debugger.py [--messages 20000]

Needs nats-server (Debian package nats-server).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from stream_backlog import publish_rows  # noqa: E402

from cdpd.cluster import connect  # noqa: E402
from cdpd.cluster.console import SKIP_AHEAD, StreamFeed  # noqa: E402
from cdpd.cluster.layout import Layout  # noqa: E402
from cdpd.config import JetStreamConfig  # noqa: E402
from cdpd.model.rows import OutboxRow  # noqa: E402
from tests.jetstream_cluster import jetstream_cluster  # noqa: E402

PAYLOAD = '{"type":"track","event":"Order Completed","properties":{"x":"' + "x" * 700 + '"}}'
CAPACITY = 500


def backlog(count: int) -> Iterator[OutboxRow]:
    """Half of it from the watched source `web`."""
    for n in range(count):
        source = "web" if n % 2 == 0 else "backend"
        yield OutboxRow(f"m{n}", source, "track", "Order Completed", f"u{n % 97}", None,
                        "2026-12-07T00:00:00.000Z", PAYLOAD)  # fmt: skip


async def measure(urls: list[str], count: int) -> tuple[int, float, float]:
    """(messages of the watched source seen, messages read per second, CPU ms per 1k read)."""
    config = JetStreamConfig(servers=urls)
    layout = Layout.of(config)
    async with connect.connected(config) as client:
        js = client.jetstream()
        await connect.ensure(js, config, layout)
        await publish_rows(js, layout, backlog(count), by_source=True)
        feed = StreamFeed(js, layout, "web", count)  # keep them all: count what was seen
        await feed.open(back=min(count, SKIP_AHEAD))
        read = min(count, SKIP_AHEAD)
        seen = 0
        started_s, cpu_s = time.perf_counter(), time.process_time()
        try:
            while True:
                rows = await feed.next(0.5)
                if not rows:
                    break
                seen += len(rows)
        finally:
            await feed.close()
        elapsed_s = time.perf_counter() - started_s - 0.5  # the last, empty wait
        return seen, read / elapsed_s, (time.process_time() - cpu_s) * 1e6 / read


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="backlog published")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdpd-debugger-bench-") as tmp:
        async with jetstream_cluster(Path(tmp)) as cluster:
            seen, rate, cpu_us = await measure(cluster.urls, args.messages)
    print(
        f"read the newest {min(args.messages, SKIP_AHEAD):,} of {args.messages:,} messages:"
        f" {seen:,} of the watched source kept, {rate:,.0f} messages read/s,"
        f" {cpu_us / 1000:.3f} ms cdpd CPU per message read ({cpu_us:.0f} ms per 1,000)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
