"""Regulations on the JetStream backend: what a deletion's stream scan costs, and how soon a
suppression written through one connection is in force at another node's watch.

Starts a three-server JetStream cluster on loopback (replicas 3, as tests/jetstream_cluster.py
does), publishes --messages messages (one --per-user of them for each user, headers as ingest
writes them, ~300-byte bodies) and then:

* scans the messages stream for one user (`cdpd.cluster.erase.find_users`, headers only), and
  deletes that user's messages (`erase_users`): seconds, messages scanned a second, and CPU
  seconds of this process and of the three nats-server processes;
* writes --suppressions suppressions one after another through `ClusterRegulations` and
  times each until a second connection's `SuppressionFeed` has it in force: median and max.

    .venv/bin/python bench/cluster_regulations.py [--messages 100000] [--per-user 10]
        [--suppressions 50]

Needs nats-server (Debian package nats-server).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats
import uvloop

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from ingest import cpu_s  # noqa: E402 (bench/ingest.py: /proc helpers)
from stream_backlog import publish_rows  # noqa: E402

from cdpd.cluster import connect, erase  # noqa: E402
from cdpd.cluster.layout import Layout  # noqa: E402
from cdpd.cluster.regulation_records import suppression_key  # noqa: E402
from cdpd.cluster.regulations import ClusterRegulations  # noqa: E402
from cdpd.cluster.suppression_feed import SuppressionFeed  # noqa: E402
from cdpd.config import JetStreamConfig, load  # noqa: E402
from cdpd.model.rows import OutboxRow  # noqa: E402
from cdpd.privacy.regulations_store import NewRegulation  # noqa: E402
from cdpd.privacy.suppression import Suppressions  # noqa: E402
from tests.jetstream_cluster import jetstream_cluster  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--per-user", type=int, default=10)
    parser.add_argument("--suppressions", type=int, default=50)
    args = parser.parse_args()
    uvloop.run(run(args))
    return 0


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with jetstream_cluster(Path(tmp) / "js") as cluster:
            config = JetStreamConfig(servers=cluster.urls)
            layout = Layout.of(config)
            client = await nats.connect(cluster.urls)
            other = await nats.connect(cluster.urls)
            try:
                js = client.jetstream()
                await connect.ensure(js, config, layout)
                await publish(js, layout, args.messages, args.per_user)
                pids = [p.pid for p in cluster.processes if p is not None]
                await measure_erase(js, layout, pids, args.per_user)
                await measure_suppression(js, other.jetstream(), layout, Path(tmp), args)
            finally:
                await other.close()
                await client.close()


async def publish(js: nats.js.JetStreamContext, layout: Layout, count: int, per_user: int) -> None:
    started = time.perf_counter()
    body = "x" * 300
    rows = (
        OutboxRow(f"m{n}", "web", "track", "Order", f"u{n // per_user}", None, "t", body)
        for n in range(count)
    )
    await publish_rows(js, layout, rows, by_source=False)
    print(f"published {count:,} messages in {time.perf_counter() - started:.1f} s")


async def measure_erase(
    js: nats.js.JetStreamContext, layout: Layout, pids: list[int], per_user: int
) -> None:
    stored = await stream_size(js, layout)
    one = frozenset({"u7"})
    spread = frozenset(f"u{n}" for n in range(200))  # on every partition: the whole stream
    for label, users, scanned in (
        ("one user (one partition)", one, stored // layout.partitions),
        (f"{len(spread)} users (every partition)", spread, stored),
    ):
        before = (time.process_time(), sum(cpu_s(p) for p in pids), time.perf_counter())
        found = await erase.find_users(js, layout, users, None)
        after = (time.process_time(), sum(cpu_s(p) for p in pids), time.perf_counter())
        wall_s = after[2] - before[2]
        print(
            f"scan for {label}: ~{scanned:,} of {stored:,} messages in {wall_s:.2f} s"
            f" ({scanned / wall_s:,.0f} messages/s); CPU: cdpd {after[0] - before[0]:.2f} s,"
            f" nats-server {after[1] - before[1]:.2f} s;"
            f" found {len(found.seqs.get(layout.stream, []))}"
        )
    started = time.perf_counter()
    removed = await erase.erase_users(js, layout, spread, None)
    wall_s = time.perf_counter() - started
    assert removed == per_user * len(spread), removed
    print(f"scan and delete of {removed:,} messages: {wall_s:.2f} s")


async def stream_size(js: nats.js.JetStreamContext, layout: Layout) -> int:
    return int((await js.stream_info(layout.stream)).state.messages)


async def measure_suppression(
    js: nats.js.JetStreamContext,
    other: nats.js.JetStreamContext,
    layout: Layout,
    tmp: Path,
    args: argparse.Namespace,
) -> None:
    path = tmp / "cdpd.toml"
    path.write_text('[[sources]]\nname = "web"\nwrite_key = "wk"\n')
    book = ClusterRegulations(load(path), js, await js.key_value(layout.regulations_bucket), _none)
    suppressions = Suppressions()
    feed = SuppressionFeed(await other.key_value(layout.regulations_bucket), suppressions)
    stop = asyncio.Event()
    watching = asyncio.create_task(feed.run(stop))
    await feed.ready.wait()
    create_ms, after_ms = [], []
    for n in range(args.suppressions):
        user = f"s{n}"
        new = NewRegulation(f"{n:024x}", "SUPPRESS_ONLY", "USER_ID", [user], None, "t", [])
        started = time.perf_counter()
        await book.create(new)
        created = time.perf_counter()
        await feed.in_force([suppression_key(user, "*")], [])
        create_ms.append((created - started) * 1000)
        after_ms.append((time.perf_counter() - created) * 1000)
    for kind, present, absent in (("SUPPRESS_ONLY", True, False), ("UNSUPPRESS", False, True)):
        users = [f"big{n}" for n in range(5000)]
        keys = [suppression_key(user, "*") for user in users]
        new = NewRegulation(
            f"{kind.lower()}{args.suppressions:08x}", kind, "USER_ID", users, None, "t", []
        )
        started = time.perf_counter()
        await book.create(new)
        await feed.in_force(keys if present else [], keys if absent else [])
        took_s = time.perf_counter() - started
        print(f"{kind} of 5,000 users, until in force at another node: {took_s:.2f} s")
    stop.set()
    await watching
    print(
        f"{args.suppressions} SUPPRESS_ONLY regulations: writing one takes median"
        f" {statistics.median(create_ms):.2f} ms; in force at another node's watch"
        f" {statistics.median(after_ms):.2f} ms (max {max(after_ms):.2f} ms) after that"
    )


async def _none(present: object, absent: object) -> None:
    return None


if __name__ == "__main__":
    raise SystemExit(main())
