"""What `cdpd outbox tail` and `cdpd outbox stats` cost on the JetStream backend. This publishes
messages to a three-server cluster on loopback (one in 1,000 of user `needle`), then times the
reads the commands make: the newest 10 messages, the newest 10 of a rare user (windows read
backwards until found), a filter that matches nothing (the whole stream read, backwards), and
the stats.

    .venv/bin/python bench/cluster_outbox_reads.py [--messages 50000]

Needs nats-server (Debian package nats-server).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cdpd.cluster import connect, outbox_reads  # noqa: E402
from cdpd.cluster.layout import Layout, headers_of  # noqa: E402
from cdpd.config import JetStreamConfig  # noqa: E402
from cdpd.model.rows import OutboxRow  # noqa: E402
from cdpd.outbox.reader import TailFilter  # noqa: E402
from tests.jetstream_cluster import jetstream_cluster  # noqa: E402

PAYLOAD = '{"type":"track","event":"Order Completed","properties":{"x":"' + "x" * 700 + '"}}'


async def publish(js: Any, layout: Layout, count: int) -> None:
    for start in range(0, count, 500):
        acks = []
        for n in range(start, min(count, start + 500)):
            user = "needle" if n % 1000 == 0 else f"u{n % 97}"
            row = OutboxRow(f"m{n}", "web", "track", "Order Completed", user, None,
                            "2026-12-07T00:00:00.000Z", PAYLOAD)  # fmt: skip
            headers = headers_of(row, by_source=True)
            acks.append(js.publish(layout.subject_for(row), PAYLOAD.encode(), headers=headers))
        await asyncio.gather(*acks)


async def timed(read: Awaitable[Any]) -> tuple[Any, float]:
    started_s = time.perf_counter()
    found = await read
    return found, time.perf_counter() - started_s


async def measure(urls: list[str], count: int) -> list[str]:
    config = JetStreamConfig(servers=urls)
    layout = Layout.of(config)
    async with connect.connected(config) as client:
        js = client.jetstream()
        await connect.ensure(js, config, layout)
        await publish(js, layout, count)
        lines = []
        for what, only in [
            ("the newest 10", TailFilter()),
            ("the newest 10 of a user (1 in 1,000)", TailFilter(user="needle")),
            ("a filter matching nothing", TailFilter(source="nosuch")),
        ]:
            (found, _), elapsed_s = await timed(outbox_reads.tail(js, layout, 10, only))
            lines.append(f"tail, {what}: {len(found)} found in {elapsed_s * 1000:,.0f} ms")
        _, elapsed_s = await timed(outbox_reads.stats(js, layout, urls))
        lines.append(f"stats: {elapsed_s * 1000:,.0f} ms")
        return lines


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000, help="messages published")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdpd-outbox-reads-bench-") as tmp:
        async with jetstream_cluster(Path(tmp)) as cluster:
            lines = await measure(cluster.urls, args.messages)
    print(f"{args.messages:,} messages in the stream")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
