"""The JetStream backend's publishing path alone, in process: cdpd CPU per message to publish
100-message requests, 40 at a time, to a three-server cluster on loopback, with each dedup
setting (`dedup_window_s` 86400: markers; 60: `Nats-Msg-Id` only; 0: none).

    .venv/bin/python bench/cluster_publish.py [--requests 200]

Needs nats-server (Debian package nats-server).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cdpd.cluster import connect  # noqa: E402
from cdpd.cluster.ingest import JetStreamAppender  # noqa: E402
from cdpd.cluster.layout import Layout  # noqa: E402
from cdpd.cluster.publish import Publisher  # noqa: E402
from cdpd.config import JetStreamConfig  # noqa: E402
from cdpd.model.rows import OutboxRow  # noqa: E402
from tests.jetstream_cluster import jetstream_cluster  # noqa: E402

PAYLOAD = "x" * 800
CONCURRENT = 40
PER_REQUEST = 100


async def measure(urls: list[str], window_s: int, requests: int) -> tuple[float, float]:
    """(messages per second, cdpd CPU microseconds per message)."""
    config = JetStreamConfig(servers=urls)
    layout = Layout.of(config)
    async with connect.connected(config) as client:
        js = client.jetstream()
        await connect.ensure(js, config, layout)
        await connect.ensure_dedup(js, config, layout, 86400)
        publisher = Publisher(client)
        await publisher.start()
        appender = JetStreamAppender(
            client, publisher, layout, dedup_window_s=window_s, ack_timeout_s=60
        )

        async def request(number: int) -> None:
            rows = [
                OutboxRow(f"{window_s}-{number}-{i}", "web", "track", "Order", f"user-{i}",
                          None, "2026-12-07T00:00:00.000Z", PAYLOAD)
                for i in range(PER_REQUEST)
            ]  # fmt: skip
            await appender.append(rows, [], 0)

        await asyncio.gather(*(request(-n - 1) for n in range(10)))  # warm up
        started_s, cpu_s = time.perf_counter(), time.process_time()
        for wave in range(0, requests, CONCURRENT):
            await asyncio.gather(*(request(wave + n) for n in range(CONCURRENT)))
        messages = (requests // CONCURRENT) * CONCURRENT * PER_REQUEST
        elapsed_s = time.perf_counter() - started_s
        return messages / elapsed_s, (time.process_time() - cpu_s) * 1e6 / messages


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per setting")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdpd-publish-bench-") as tmp:
        async with jetstream_cluster(Path(tmp)) as cluster:
            for window_s, name in ((86400, "markers"), (60, "Nats-Msg-Id only"), (0, "no dedup")):
                rate, cpu_us = await measure(cluster.urls, window_s, args.requests)
                print(f"{name:>16}: {rate:8,.0f} messages/s  {cpu_us:6.1f} us cdpd CPU/message")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
