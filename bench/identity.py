"""Identity benchmark: resolution from a backlog, against single-event ingest in the same run,
and Profile API traits lookups while ingest runs.

1. Writes a backlog of --messages messages over --users users straight into a fresh outbox (as
   ingest stores them): realistic anonymous-to-known journeys (anonymous page views and
   tracks, a sign-up identify with an email, known tracks, a second device for some users),
   starts cdpd with [identity] pinned to core 0 and times the identity stage through the
   backlog (first to last resolved message, from /metrics): messages resolved per second.
2. Loads the same cdpd with wrk (single-event `POST /v1/track`, 64 connections, core 1):
   single-event ingest per second; prints the ratio resolved/ingested.
3. Sends batches of ingest at --ingest-rate events/s and, at the same time, --api-rate Profile
   API `traits` lookups per second (open loop, known users); prints p50/p99/max latency.

    .venv/bin/python bench/identity.py [--messages 200000] [--users 50000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec
import uvloop
from ingest import cpu_s, free_port, run_wrk, stop, wait_for_port

from cdpd.model.timestamps import format_ms, now_ms
from cdpd.outbox import schema

HERE = Path(__file__).resolve().parent
TOKEN = "bench_token"  # noqa: S105
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()}
WRITE_AUTH = {"Authorization": "Basic d2tfYmVuY2g6"}  # wk_bench:
CONTEXT = {
    "library": {"name": "analytics.js", "version": "next-1.84.1"},
    "page": {"path": "/pricing", "url": "https://shop.example.com/pricing", "title": "Pricing"},
    "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
    "locale": "en-US",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--api-rate", type=int, default=500)
    parser.add_argument("--ingest-rate", type=int, default=1000, help="0: no ingest in phase 3")
    parser.add_argument("--server-cpus", default="0", help="cores cdpd may use (taskset list)")
    args = parser.parse_args()
    return uvloop.run(run(args))


def journeys(messages: int, users: int) -> list[dict[str, object]]:
    """Per user, in order: anonymous page view(s), an anonymous track, the sign-up identify
    (anonymousId + userId + email), then known tracks; one user in five comes back on a second
    device and identifies there too. Users' journeys are interleaved at random."""
    rng = random.Random(7)
    per_user = [_journey(n, rng) for n in range(users)]
    cursors = [0] * users
    found: list[dict[str, object]] = []
    live = list(range(users))
    while len(found) < messages and live:
        index = rng.randrange(len(live))
        user = live[index]
        steps = per_user[user]
        if cursors[user] < len(steps):
            found.append(steps[cursors[user]])
            cursors[user] += 1
        else:
            steps.append(_known_track(user, len(steps)))  # keeps coming back, known
            found.append(steps[-1])
            cursors[user] += 1
        if rng.random() < 0.02:
            live[index] = live[-1]
            live.pop()
    for n, message in enumerate(found):
        message["messageId"] = f"id-{n}"
    return found


def _journey(user: int, rng: random.Random) -> list[dict[str, object]]:
    anon = f"anon-{user:06d}-{rng.getrandbits(32):08x}"
    steps: list[dict[str, object]] = [
        {"type": "page", "anonymousId": anon, "name": "Pricing", "context": CONTEXT},
        {"type": "track", "anonymousId": anon, "event": "Product Viewed",
         "properties": {"product_id": f"p{user % 97}"}, "context": CONTEXT},
        {"type": "identify", "anonymousId": anon, "userId": f"user-{user}", "context": CONTEXT,
         "traits": {"email": f"user{user}@example.com", "plan": "free", "name": f"User {user}"}},
    ]  # fmt: skip
    if user % 5 == 0:
        phone = f"anon-{user:06d}-mobile"
        steps += [
            {"type": "screen", "anonymousId": phone, "name": "Home", "context": CONTEXT},
            {"type": "identify", "anonymousId": phone, "userId": f"user-{user}",
             "traits": {"plan": "pro"}, "context": CONTEXT},
        ]  # fmt: skip
    return steps


def _known_track(user: int, step: int) -> dict[str, object]:
    return {
        "type": "track",
        "userId": f"user-{user}",
        "event": "Order Completed",
        "properties": {"order_id": f"o{user}-{step}", "revenue": 25.0, "currency": "USD"},
        "context": CONTEXT,
    }


async def fill(outbox: Path, messages: list[dict[str, object]]) -> None:
    async with schema.connect(outbox):
        pass  # creates the file at the current schema
    at = format_ms(now_ms())
    encode = msgspec.json.encode
    with sqlite3.connect(outbox) as conn:
        conn.executemany(
            "INSERT INTO messages (message_id, source, type, event, user_id, anonymous_id,"
            " received_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (m["messageId"], "bench", m["type"], m.get("event"), m.get("userId"),
                 m.get("anonymousId"), at, encode({**m, "receivedAt": at}).decode())
                for m in messages
            ],
        )  # fmt: skip


def config(tmp: Path, port: int) -> Path:
    path = tmp / "cdpd.toml"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[logging]\naccess_log = false\nlevel = "warning"\n'
        f'[storage]\ndata_dir = "{tmp / "var"}"\nmin_free_disk_bytes = 0\n'
        f'[[sources]]\nname = "bench"\nwrite_key = "wk_bench"\n'
        f'[identity]\nspace = "bench"\naccess_tokens = ["{TOKEN}"]\n'
    )
    return path


async def resolved_count(http: aiohttp.ClientSession, base: str) -> tuple[int, int]:
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    resolved = re.search(r"^cdpd_identity_resolved_total ([\d.e+]+)", text, re.M)
    lag = re.search(r"^cdpd_identity_lag_messages ([\d.e+]+)", text, re.M)
    assert resolved is not None
    assert lag is not None
    return int(float(resolved.group(1))), int(float(lag.group(1)))


async def time_backlog(
    http: aiohttp.ClientSession, base: str, total: int, pid: int
) -> tuple[float, float]:
    """Messages resolved per second, and cdpd's CPU time per message (µs, every thread)."""
    first_at = first_count = first_cpu = None
    while True:
        count, _ = await resolved_count(http, base)
        now = time.perf_counter()
        if count and first_at is None:
            first_at, first_count, first_cpu = now, count, cpu_s(pid)
        if count >= total:
            assert first_at is not None
            assert first_count is not None
            assert first_cpu is not None
            done = count - first_count
            return done / (now - first_at), (cpu_s(pid) - first_cpu) / done * 1e6
        await asyncio.sleep(0.5)


def start_cdpd(config_path: Path, port: int, cpus: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["taskset", "-c", cpus, sys.executable, "-m", "cdpd", "serve", "--config",
         str(config_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=HERE.parent,
    )  # fmt: skip
    wait_for_port(port, proc)
    return proc


async def caught_up(http: aiohttp.ClientSession, base: str) -> None:
    async with asyncio.timeout(300):
        while True:
            if (await resolved_count(http, base))[1] == 0:
                return
            await asyncio.sleep(0.2)


async def one_at_a_time(http: aiohttp.ClientSession, base: str, known: list[str]) -> list[float]:
    """Traits lookups one after another, nothing else running: the service time."""
    rng = random.Random(5)
    latencies = []
    for _ in range(1000):
        url = (
            f"{base}/v1/spaces/bench/collections/users/profiles/user_id:{rng.choice(known)}/traits"
        )
        began = time.perf_counter()
        async with http.get(url, headers=AUTH) as resp:
            await resp.read()
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies


async def api_under_ingest(
    http: aiohttp.ClientSession, base: str, args: argparse.Namespace, known: list[str]
) -> tuple[list[float], int]:
    stop_at = time.perf_counter() + args.seconds
    latencies: list[float] = []
    failures = 0
    rng = random.Random(11)

    async def lookup() -> None:
        nonlocal failures
        user = rng.choice(known)  # identified in the backlog
        url = f"{base}/v1/spaces/bench/collections/users/profiles/user_id:{user}/traits"
        began = time.perf_counter()
        async with http.get(url, headers=AUTH) as resp:
            await resp.read()
            if resp.status != 200:
                failures += 1
        latencies.append((time.perf_counter() - began) * 1000)

    async def ingest() -> None:
        if not args.ingest_rate:
            return
        batch_size = 50
        interval = batch_size / args.ingest_rate
        n = 0
        while time.perf_counter() < stop_at:
            batch = [
                _known_track(rng.randrange(args.users), 0) | {"messageId": f"live-{n + i}"}
                for i in range(batch_size)
            ]
            n += batch_size
            async with http.post(
                f"{base}/v1/batch", json={"batch": batch}, headers=WRITE_AUTH
            ) as r:
                assert r.status == 200
            await asyncio.sleep(interval)

    async def lookups() -> None:
        interval = 1 / args.api_rate
        began = time.perf_counter()
        pending = set()
        n = 0
        while time.perf_counter() < stop_at:
            await asyncio.sleep(max(0.0, began + n * interval - time.perf_counter()))
            pending.add(asyncio.ensure_future(lookup()))
            n += 1
        await asyncio.gather(*pending)

    await asyncio.gather(ingest(), lookups())
    return latencies, failures


async def run(args: argparse.Namespace) -> int:
    messages = journeys(args.messages, args.users)
    with tempfile.TemporaryDirectory(prefix="cdpd-identity-") as tmp_name:
        tmp = Path(tmp_name)
        await fill(tmp / "var" / "outbox.sqlite3", messages)
        port = free_port()
        proc = start_cdpd(config(tmp, port), port, args.server_cpus)
        try:
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
                resolve_rate, resolve_cpu_us = await time_backlog(
                    http, base, len(messages), proc.pid
                )
                print(f"resolved {resolve_rate:,.0f} messages/s", file=sys.stderr)
                cpu_before = cpu_s(proc.pid)
                wrk = await asyncio.to_thread(run_wrk, port, "/v1/track", 1, args.seconds, 64)
                ingest_rate = float(re.search(r"Requests/sec:\s+([\d.]+)", wrk).group(1))  # type: ignore[union-attr]
                # (the events ingested are also resolved meanwhile: both costs are in this)
                ingest_cpu_us = (cpu_s(proc.pid) - cpu_before) / (ingest_rate * args.seconds) * 1e6
                print(f"ingested {ingest_rate:,.0f} single events/s", file=sys.stderr)
                await caught_up(http, base)  # before phase 3
                known = sorted({str(m["userId"]) for m in messages if m["type"] == "identify"})
                alone = await one_at_a_time(http, base, known)
                latencies, failures = await api_under_ingest(http, base, args, known)
        finally:
            stop(proc)
    cuts = statistics.quantiles(latencies, n=100)
    single = statistics.quantiles(alone, n=100)
    print(
        "| backlog | users | resolved/s | single-event ingest/s | ratio "
        "| CPU µs/message resolved | CPU µs/event ingested (and resolved) |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {len(messages):,} | {args.users:,} | {resolve_rate:,.0f} | {ingest_rate:,.0f} "
        f"| {resolve_rate / ingest_rate:.1f}x | {resolve_cpu_us:.0f} | {ingest_cpu_us:.0f} |"
    )
    print()
    print("| traits req/s | ingest events/s | lookups | p50 ms | p99 ms | max ms | non-200 |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| one at a time | 0 | {len(alone):,} | {single[49]:.2f} | {single[98]:.2f} "
        f"| {max(alone):.2f} | - |"
    )
    print(
        f"| {args.api_rate} | {args.ingest_rate} | {len(latencies):,} | {cuts[49]:.2f} "
        f"| {cuts[98]:.2f} | {max(latencies):.2f} | {failures} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
