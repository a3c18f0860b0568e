"""The console's Audiences pages on a JetStream node that does not hold the profiles lease:
how long a page takes when the audience has `--members` members. Engage's file is filled as
`bench/console.py` fills it (each member entered in the last 30 days, half of them exited and
entered again; Engage's own migration counts them into `engage_sizes` and
`engage_change_days`), stored as a snapshot in a three-server cluster on loopback, and the
profiles lease is held by another name, so the one real node reads the snapshot it downloads.
A person signed in times the listing and the audience's page over `--requests` requests each.
Prints p50, p95 and max milliseconds. The client runs in the node's process.

    .venv/bin/python bench/cluster_console_audiences.py [--members 1000000] [--requests 40]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.console import fill_engage  # noqa: E402
from cdpd.clock import SystemClock  # noqa: E402
from cdpd.cluster import connect, snapshots  # noqa: E402
from cdpd.cluster.layout import Layout  # noqa: E402
from cdpd.cluster.lease import Lease, holding  # noqa: E402
from cdpd.cluster.node import Node, running_node  # noqa: E402
from cdpd.cluster.profiles import LEASE_KEY, ProfilesLeader  # noqa: E402
from cdpd.cluster.snapshots import SnapshotName  # noqa: E402
from cdpd.config import Config  # noqa: E402
from cdpd.identity import store as identity_store  # noqa: E402
from tests.cluster_support import jetstream_config, jetstream_text, profiles_toml  # noqa: E402
from tests.console_support import add_cluster_person, signed_in, workspaces_toml  # noqa: E402
from tests.jetstream_cluster import jetstream_cluster  # noqa: E402

PAGES = ("/console/w/acme/audiences", "/console/w/acme/audiences/buyers")


def _snapshot(folder: Path, members: int) -> Path:
    """A snapshot of an empty identity store and an Engage file with `members` members."""
    files = {"engage.sqlite3": folder / "engage.sqlite3", "identity.sqlite3": folder / "id.db"}
    fill_engage(files["engage.sqlite3"], members)
    with identity_store.connect(files["identity.sqlite3"]):
        pass  # its schema
    tar_path = folder / "snapshot.tar.zst"
    snapshots.copy_files(files, tar_path)
    return tar_path


def _config(root: Path, urls: list[str]) -> Config:
    extra = workspaces_toml("http://127.0.0.1:9") + profiles_toml(
        "http://127.0.0.1:9", {"buyers": "event('Order 1').count() >= 1"}
    )
    text = jetstream_text(root / "a", urls, extra).replace(
        'destinations = ["hook_a"]\n', 'destinations = ["hook_a"]\naudiences = ["buyers"]\n', 1
    )
    return jetstream_config(root / "a.toml", text)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "state").mkdir()
        started = time.perf_counter()
        tar_path = await asyncio.to_thread(_snapshot, root / "state", args.members)
        size_mb = tar_path.stat().st_size / 1e6
        print(
            f"snapshot: {size_mb:.0f} MB in {time.perf_counter() - started:.1f} s", file=sys.stderr
        )
        async with jetstream_cluster(root / "js") as cluster:
            config = _config(root, cluster.urls)
            jetstream = config.storage.jetstream
            async with connect.connected(jetstream, name="bench") as client:
                js = client.jetstream(timeout=60)
                layout = Layout.of(jetstream)
                await connect.ensure(js, jetstream, layout)
                store = await snapshots.state_store(js, layout, jetstream.replicas)
                await snapshots.upload(store, SnapshotName(1, 0), tar_path)
                lease = Lease(await js.key_value(layout.leases_bucket), LEASE_KEY, "elsewhere")
                assert await lease.acquire()
                async with (
                    holding(lease, SystemClock()),
                    running_node(config, node_name="a") as node,
                ):
                    await _until_viewed(node)
                    await add_cluster_person(config, "bench", {"acme": "owner"})
                    async with signed_in(node.url, "bench") as (session, _):
                        await _time_pages(session, args.requests)


async def _until_viewed(node: Node) -> None:
    leader = node.stages["profiles"]
    assert isinstance(leader, ProfilesLeader)
    started = time.perf_counter()
    while leader.profiles.view is None:  # noqa: ASYNC110 (polled: no event for it)
        await asyncio.sleep(0.1)
    print(
        f"snapshot downloaded and opened in {time.perf_counter() - started:.1f} s", file=sys.stderr
    )


async def _time_pages(session: aiohttp.ClientSession, requests: int) -> None:
    print("| page | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|")
    for page in PAGES:
        timings = []
        for _ in range(requests + 1):
            began = time.perf_counter()
            async with session.get(page) as resp:
                text = await resp.text()
                assert resp.status == 200, (page, resp.status)
                assert "reads the newest snapshot" in text
            timings.append((time.perf_counter() - began) * 1000)
        timings = sorted(timings[1:])  # the first warms the caches
        p95 = timings[min(len(timings) - 1, int(0.95 * len(timings)))]
        print(f"| {page} | {statistics.median(timings):.1f} | {p95:.1f} | {timings[-1]:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=40)
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
