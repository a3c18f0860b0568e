"""What an idle JetStream cluster costs, and how long a command to the profiles lease holder
takes: two `cdpd serve` nodes (identity on, so one of them holds the profiles lease) on a
three-server cluster on loopback, with nothing sent to them.

Over `--idle` seconds: the messages the cdpd nodes publish to NATS per second (API requests,
pull requests, publishes, from the servers' `/connz` monitoring, summed over the three
servers and the nodes' connections), every message the servers take in per second (`/varz`
`in_msgs`, routes included), and CPU seconds per node and for the three nats-servers (user
+ system, from /proc). Then `--unmerges` unmerges through the admin API of the node that does
not hold the lease (each identifier merged into a profile beforehand): p50 and max of the
round trip.

    .venv/bin/python bench/cluster_idle.py [--idle 30] [--unmerges 20]

Needs nats-server (Debian package nats-server).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import nats
from nats.js.errors import KeyNotFoundError

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import ingest as wrk_bench  # noqa: E402 (bench/ingest.py: ports and /proc helpers)

from cdpd.cluster.layout import Layout  # noqa: E402
from tests.jetstream_cluster import JetStreamCluster  # noqa: E402

ADMIN_TOKEN = "bench-admin"  # noqa: S105 (a bench's own cluster)
WRITE_KEY = "wk_bench"


class MonitoredCluster(JetStreamCluster):
    """tests/jetstream_cluster.py's cluster with each server's HTTP monitoring on."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.monitor_ports = [wrk_bench.free_port() for _ in self.client_ports]

    def _command(self, index: int) -> list[str]:
        return [*super()._command(index), "-m", str(self.monitor_ports[index])]

    def monitor(self, index: int, path: str) -> dict[str, object]:
        url = f"http://127.0.0.1:{self.monitor_ports[index]}/{path}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            found: dict[str, object] = json.load(answer)
            return found


def cdpd_published(cluster: MonitoredCluster) -> int:
    """Messages published so far by the servers' clients named `cdpd ...` (the nodes)."""
    total = 0
    for index in range(len(cluster.client_ports)):
        connections = cluster.monitor(index, "connz?limit=4096")["connections"]
        assert isinstance(connections, list)
        total += sum(c["in_msgs"] for c in connections if c.get("name", "").startswith("cdpd "))
    return total


def servers_in(cluster: MonitoredCluster) -> int:
    return sum(int(str(cluster.monitor(i, "varz")["in_msgs"])) for i in range(3))


def start_node(
    name: str, port: int, root: Path, cluster: MonitoredCluster
) -> subprocess.Popen[bytes]:
    folder = root / name
    folder.mkdir(parents=True)
    servers = ", ".join(f'"{url}"' for url in cluster.urls)
    config = folder / "cdpd.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[storage]\nbackend = "jetstream"\ndata_dir = "{folder / "var"}"\n'
        "min_free_disk_bytes = 0\n"
        f"[storage.jetstream]\nservers = [{servers}]\n"
        f'[[sources]]\nname = "bench"\nwrite_key = "{WRITE_KEY}"\n'
        f'[admin]\ntoken = "{ADMIN_TOKEN}"\n'
        '[identity]\nspace = "bench"\naccess_tokens = ["t"]\n'
        "[console]\nenabled = false\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdpd", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=HERE.parent,
    )
    wrk_bench.wait_for_port(port, proc, timeout_s=60.0)
    return proc


async def unmerge(http: aiohttp.ClientSession, port: int, identifier: str) -> tuple[int, float]:
    started = time.perf_counter()
    async with http.post(
        f"http://127.0.0.1:{port}/admin/profiles/unmerge",
        json={"identifier": identifier},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as answer:
        await answer.read()
        return answer.status, (time.perf_counter() - started) * 1000


async def send_merges(http: aiohttp.ClientSession, port: int, count: int) -> None:
    """An identify per identifier to unmerge: `device-n` joins `user-n`'s profile."""
    batch = [
        {"type": "identify", "userId": f"user-{n}", "anonymousId": f"device-{n}"}
        for n in range(count + 1)
    ]
    auth = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    async with http.post(
        f"http://127.0.0.1:{port}/v1/batch", json={"batch": batch}, headers=auth
    ) as answer:
        assert answer.status == 200, await answer.text()


async def follower(cluster: MonitoredCluster, procs: list[subprocess.Popen[bytes]]) -> int:
    """The index of the node that does not hold the profiles lease (once one does): the
    lease's value is the holder's `host:pid`."""
    client = await nats.connect(cluster.urls)
    try:
        leases = await client.jetstream().key_value(f"{Layout().stream}_leases")
        for _ in range(1200):
            try:
                holder = (await leases.get("profiles")).value or b""
            except KeyNotFoundError:
                await asyncio.sleep(0.1)
                continue
            pid = int(holder.decode().rpartition(":")[2])
            return next(i for i, p in enumerate(procs) if p.pid != pid)
    finally:
        await client.close()
    raise RuntimeError("no node took the profiles lease")


async def unmerges(port: int, count: int) -> list[float]:
    async with aiohttp.ClientSession() as http:
        # The first unmerge waits for the holder to resolve the identifies: not counted.
        await send_merges(http, port, count)
        for attempt in range(600):
            status, _ = await unmerge(http, port, "anonymous_id:device-0")
            if status == 200:
                break
            await asyncio.sleep(0.1 if attempt else 2.0)
        else:
            raise RuntimeError("the warm-up unmerge never succeeded")
        took = []
        for n in range(1, count + 1):
            status, ms = await unmerge(http, port, f"anonymous_id:device-{n}")
            assert status == 200, status
            took.append(ms)
        return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle measured")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds before measuring")
    parser.add_argument("--unmerges", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdpd-idle-bench-") as tmp:
        root = Path(tmp)
        cluster = MonitoredCluster(root / "jetstream")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for index in range(3):
                cluster.start(index)
            asyncio.run(cluster.ready())
            ports = [wrk_bench.free_port() for _ in range(2)]
            procs = [start_node(f"node{i}", port, root, cluster) for i, port in enumerate(ports)]
            time.sleep(args.settle)  # the lease taken, the first snapshot stored
            nats_pids = [p.pid for p in cluster.processes if p is not None]
            cpu_before = [wrk_bench.cpu_s(p.pid) for p in procs]
            nats_before = sum(wrk_bench.cpu_s(pid) for pid in nats_pids)
            published_before, in_before = cdpd_published(cluster), servers_in(cluster)
            time.sleep(args.idle)
            published = cdpd_published(cluster) - published_before
            taken_in = servers_in(cluster) - in_before
            cpu = [
                wrk_bench.cpu_s(p.pid) - before for p, before in zip(procs, cpu_before, strict=True)
            ]
            nats_cpu = sum(wrk_bench.cpu_s(pid) for pid in nats_pids) - nats_before
            print(f"idle {args.idle:g} s, two nodes, three servers:")
            print(f"  cdpd nodes -> NATS: {published / args.idle:.1f} messages/s")
            print(f"  servers' in_msgs (routes included): {taken_in / args.idle:.1f} /s")
            print("  cdpd CPU per node: " + ", ".join(f"{c:.2f} s" for c in cpu))
            print(f"  nats-server CPU (three): {nats_cpu:.2f} s")
            asker = asyncio.run(follower(cluster, procs))
            took = asyncio.run(unmerges(ports[asker], args.unmerges))
            print(
                f"unmerge through the node without the lease, {len(took)} in a row:"
                f" p50 {statistics.median(took):.1f} ms, max {max(took):.1f} ms"
            )
        finally:
            for proc in procs:
                wrk_bench.stop(proc)
            cluster.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
