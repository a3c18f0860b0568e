"""Profiles snapshots on the JetStream backend: what a snapshot of the identity and Engage
files costs at --profiles profiles, on a three-server JetStream cluster started here (R3).

1. Builds the files as the stages would: --profiles users, each with an Identify (email and
   traits) and --tracks-per-profile tracks, resolved by the identity stage's own code into a
   fresh identity.sqlite3 (batches of 2,000, as the stage writes them), and applied to a fresh
   engage.sqlite3 with 4 audiences and 2 computed traits.
2. Times a snapshot as the lease holder takes it (online backup of both files into a
   zstd-compressed tar, `cdpd.cluster.snapshots.copy_files`), its upload to the `CDPD_state`
   object store, its download and its unpacking (what a node taking over, or answering the
   Profile API from a snapshot, does), and prints the sizes and how far the process's resident
   memory rose above where it stood before each step (sampled every 20 ms): the archive is
   streamed, never whole in memory.

    .venv/bin/python bench/profiles_snapshot.py [--profiles 100000] [--tracks-per-profile 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import nats  # noqa: E402

from cdpd.cluster import snapshots  # noqa: E402
from cdpd.cluster.layout import Layout  # noqa: E402
from cdpd.config import IdentityConfig  # noqa: E402
from cdpd.engage import catalog  # noqa: E402
from cdpd.engage.catalog import Source  # noqa: E402
from cdpd.engage.store import EngageStore  # noqa: E402
from cdpd.identity import store  # noqa: E402
from cdpd.identity.graph import Graph  # noqa: E402
from cdpd.identity.identifiers import Rules  # noqa: E402
from cdpd.identity.stage import resolve_messages  # noqa: E402
from cdpd.model.timestamps import format_ms, now_ms  # noqa: E402
from cdpd.outbox.consumers import Message  # noqa: E402
from tests.jetstream_cluster import JetStreamCluster  # noqa: E402

import msgspec  # noqa: E402  isort: skip

BATCH = 2000
DEFINITIONS = [
    Source(key="buyers", kind="audience", query="event('Order Completed').count() >= 1"),
    Source(key="pros", kind="audience", query="trait('plan') = 'pro'"),
    Source(
        key="recent", kind="audience", query="event('Product Viewed').within(7 days).count() >= 1"
    ),
    Source(
        key="big", kind="audience", query="event('Order Completed').sum(property('revenue')) >= 100"
    ),
    Source(key="orders", kind="computed_trait", query="event('Order Completed').count()"),
    Source(
        key="spend",
        kind="computed_trait",
        query="event('Order Completed').sum(property('revenue'))",
    ),
]


def journeys(profiles: int, tracks: int) -> list[Message]:
    rng = random.Random(7)
    now = now_ms()
    found: list[Message] = []
    for user in range(profiles * (1 + tracks)):
        n, seq = user % profiles, len(found) + 1
        at = format_ms(now - rng.randrange(0, 30 * 86_400_000))
        if user < profiles:
            payload: dict[str, Any] = {
                "type": "identify",
                "userId": f"u{n}",
                "anonymousId": f"a{n}",
                "traits": {"email": f"u{n}@example.com", "plan": rng.choice(["free", "pro"])},
            }
        else:
            payload = {
                "type": "track",
                "userId": f"u{n}",
                "event": rng.choice(["Order Completed", "Product Viewed"]),
                "properties": {"revenue": rng.randrange(5, 250)},
            }
        payload |= {"messageId": f"m{seq}", "timestamp": at, "receivedAt": at}
        found.append(
            Message(
                seq,
                f"m{seq}",
                "web",
                payload["type"],
                payload.get("event"),
                f"u{n}",
                payload.get("anonymousId"),
                at,
                msgspec.json.encode(payload).decode(),
            )
        )
    return found


def build_identity(path: Path, messages: list[Message]) -> Graph:
    graph, rules = Graph(), Rules(IdentityConfig(space="bench", access_tokens=["t"]))
    with store.connect(path) as conn:
        for start in range(0, len(messages), BATCH):
            batch = messages[start : start + BATCH]
            resolutions = resolve_messages(graph, rules, batch)
            store.write(conn, store.plan(graph, resolutions, batch[-1].seq))
    return graph


async def build_engage(path: Path, graph: Graph, messages: list[Message]) -> None:
    engage = await EngageStore.open(path)
    try:
        now = now_ms()
        await engage.register(DEFINITIONS, now)
        engage.use(catalog.build(DEFINITIONS))
        inputs = []
        for m in messages:
            owner = graph.owner("users", ("user_id", m.user_id or ""))
            assert owner is not None
            inputs.append((graph.canonical(owner), msgspec.json.decode(m.payload), m.source))
        for start in range(0, len(inputs), 500):
            await engage.apply_many(inputs[start : start + 500], now)
    finally:
        await engage.close()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def rss_rise(rises: dict[str, int], step: str) -> Iterator[None]:
    """Record in `rises[step]` the most resident memory rose above its level at the start."""
    start, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_bytes() - start)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        done.set()
        sampler.join()
        rises[step] = max(peak[0], _rss_bytes() - start)


async def through_the_cluster(folder: Path, files: dict[str, Path]) -> None:
    cluster = JetStreamCluster(folder / "jetstream")
    try:
        for index in range(3):
            cluster.start(index)
        await cluster.ready()
        client = await nats.connect(cluster.urls)
        try:
            js = client.jetstream(timeout=60)
            bucket = await snapshots.state_store(js, Layout(), replicas=3)
            archive_path = folder / "snapshot.tar.zst"
            rises: dict[str, int] = {}
            started = time.perf_counter()
            with rss_rise(rises, "copy"):
                position = await asyncio.to_thread(snapshots.copy_files, files, archive_path)
            copied_s = time.perf_counter() - started
            name = snapshots.SnapshotName(1, position)
            started = time.perf_counter()
            with rss_rise(rises, "upload"):
                size = await snapshots.upload(bucket, name, archive_path)
            uploaded_s = time.perf_counter() - started
            restored = folder / "restored"
            restored.mkdir()
            started = time.perf_counter()
            with rss_rise(rises, "download"):
                await snapshots.download(bucket, name, restored / "snapshot")
            downloaded_s = time.perf_counter() - started
            targets = {key: restored / key for key in files}
            started = time.perf_counter()
            with rss_rise(rises, "unpack"):
                await asyncio.to_thread(snapshots.unpack, restored / "snapshot", targets)
            unpacked_s = time.perf_counter() - started
        finally:
            await client.close()
    finally:
        cluster.stop_all()
    for key, path in files.items():
        print(f"{key}: {path.stat().st_size / 1e6:.1f} MB")
    files_bytes = sum(path.stat().st_size for path in files.values())
    print(f"snapshot (tar of both, zstd): {size / 1e6:.1f} MB", end="")
    print(f" ({files_bytes / size:.1f}x smaller), identity position {position}")
    print(f"copy (online backup + tar + zstd): {copied_s:.2f} s")
    print(f"upload to the object store (R3): {uploaded_s:.2f} s")
    print(f"download: {downloaded_s:.2f} s; unpack: {unpacked_s:.2f} s")
    print(f"restore (download + unpack): {downloaded_s + unpacked_s:.2f} s")
    rise = ", ".join(f"{step} +{rss / 1e6:.0f} MB" for step, rss in rises.items())
    print(f"resident memory rise: {rise}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=100_000, help="users (profiles)")
    parser.add_argument("--tracks-per-profile", type=int, default=2, help="tracks of each user")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdpd-snapshot-bench-") as tmp:
        folder = Path(tmp)
        messages = journeys(args.profiles, args.tracks_per_profile)
        files = {"engage.sqlite3": folder / "engage.sqlite3"}
        files["identity.sqlite3"] = folder / "identity.sqlite3"
        started = time.perf_counter()
        graph = build_identity(files["identity.sqlite3"], messages)
        print(f"{len(messages)} messages resolved into {len(graph.profiles)} profiles", end="")
        print(f" in {time.perf_counter() - started:.1f} s")
        asyncio.run(build_engage(files["engage.sqlite3"], graph, messages))
        asyncio.run(through_the_cluster(folder, files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
