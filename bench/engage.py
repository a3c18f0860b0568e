"""Engage benchmark, the part that does not need profiles from Unify: the evaluator and its
store on 100,000 synthetic profiles with 20 audiences and 10 computed traits.

1. Applies N track/identify messages spread over P profiles to a fresh engage.sqlite3 through
   `EngageStore.apply_many` (batches of 500, one transaction each), once with no definitions
   and once with all 30 live, and prints messages/s of each and their ratio.
2. Previews queries over every stored profile (`cdpd audiences preview`) and prints the
   median time of three runs of each.
3. Prints the peak RSS of this process (VmHWM).

4. End to end, a real cdpd in this process (`cdpd.app.running`) with `[identity]` and a
   webhook destination served by a local sink: the same track/identify messages posted to
   /v1/batch, once with no definitions and once with the 30 live (one audience sent to the
   sink); sustained messages/s from the first post until the last stage (Engage, or identity
   when there is nothing to keep) has applied the last message, and their ratio; then entry
   latency: Identifies that put a new user into the audience, one at a time, from the ingest
   ack to the sink's receipt of the entry (p50/p99).

    .venv/bin/python bench/engage.py [--profiles 100000] [--messages 200000]
        [--daemon-profiles 20000] [--daemon-messages 60000] [--entries 200]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cdpd.engage import catalog
from cdpd.engage.catalog import Source
from cdpd.engage.plan import compile_query
from cdpd.engage.preview import preview
from cdpd.engage.store import EngageStore
from cdpd.model.timestamps import format_ms, now_ms

EVENTS = ["Order Completed", "Product Viewed", "Cart Viewed", "Signed Up", "Page Viewed"]
CATEGORIES = ["shoes", "hats", "bags", "shirts", "socks", "coats"]
AUDIENCES = [
    "event('Order Completed').within(30 days).count() >= 2",
    "event('Order Completed').within(7 days).count() >= 1",
    "event('Order Completed').where(property('revenue') >= 100).within(90 days).count() >= 1",
    "event('Product Viewed').within(7 days).count() >= 5",
    "event('Product Viewed').where(property('category') = 'shoes').within(14 days).count() >= 1",
    "event('Cart Viewed').where(NOT event('Order Completed').within(parent: 1 days).count() >= 1)"
    ".within(7 days).count() >= 1",
    "NOT (event('Order Completed').count() >= 1 AND trait('total_spend') > 200)",
    "trait('plan') = 'pro'",
    "trait('plan').one_of('pro', 'team') AND event('Signed Up').count() >= 1",
    "trait('email').ends_with('@example.com')",
    "event('Page Viewed').within(1 days).count() >= 3",
    "event('Page Viewed').between(7 days, 14 days).count() >= 1",
    "event('Signed Up').within(30 days).count() >= 1 AND trait('plan') != 'pro'",
    "event('Order Completed').within(30 days).sum(property('revenue')) > 300",
    "event('Product Viewed').within(30 days).unique(property('category')).count() >= 3",
    "trait('lifetime_orders') >= 3",
    "trait('top_category') = 'shoes'",
    "event('Order Completed').where(property('category').one_of('hats', 'bags')).count() >= 1",
    "trait('age') >= 30 AND trait('age') < 40",
    "event('Cart Viewed').within(3 days).count() >= 2 OR event('Page Viewed').count() >= 10",
]
TRAITS = [
    "event('Order Completed').count()",
    "event('Order Completed').within(30 days).sum(property('revenue'))",
    "event('Order Completed').within(90 days).avg(property('revenue'))",
    "event('Product Viewed').within(30 days).mode(property('category'), 2)",
    "event('Product Viewed').unique(property('category'))",
    "event('Order Completed').first(property('category'))",
    "event('Order Completed').last(property('category'))",
    "event('Order Completed').max(property('revenue'))",
    "event('Page Viewed').within(7 days).count()",
    "event('Cart Viewed').min(property('items'))",
]
TRAIT_KEYS = [
    "lifetime_orders",
    "revenue_30d",
    "avg_order_90d",
    "top_category",
    "categories",
    "first_category",
    "last_category",
    "biggest_order",
    "pages_7d",
    "smallest_cart",
]
PREVIEWS = [
    "event('Order Completed').within(30 days).count() >= 2",
    "event('Product Viewed').within(7 days).count() >= 1 AND trait('plan') = 'pro'",
    "trait('plan') = 'pro' AND trait('lifetime_orders') >= 1",
    "NOT (event('Order Completed').count() >= 1 AND trait('total_spend') > 200)",
]


def definitions() -> list[Source]:
    sources = [
        Source(key=f"audience_{n:02d}", kind="audience", query=query)
        for n, query in enumerate(AUDIENCES)
    ]
    sources += [
        Source(key=key, kind="computed_trait", query=query)
        for key, query in zip(TRAIT_KEYS, TRAITS, strict=True)
    ]
    return sources


def messages(profiles: int, count: int, now: int) -> list[tuple[str, dict[str, Any], str]]:
    rng = random.Random(7)
    result = []
    for n in range(count):
        profile = n % profiles if n < profiles else rng.randrange(profiles)
        at = format_ms(now - rng.randrange(0, 60 * 24 * 3_600_000))
        if n < profiles:
            message: dict[str, Any] = {
                "type": "identify",
                "userId": f"u{profile}",
                "timestamp": at,
                "traits": {
                    "email": f"u{profile}@example.com",
                    "plan": rng.choice(["free", "pro", "team"]),
                    "age": rng.randrange(18, 70),
                    "total_spend": rng.randrange(0, 500),
                },
            }
        else:
            message = {
                "type": "track",
                "event": rng.choice(EVENTS),
                "userId": f"u{profile}",
                "timestamp": at,
                "properties": {
                    "revenue": rng.randrange(5, 250),
                    "category": rng.choice(CATEGORIES),
                    "items": rng.randrange(1, 6),
                },
            }
        result.append((f"p{profile}", message, "web"))
    return result


async def apply_all(
    path: Path, sources: list[Source], inputs: list[Any], now: int
) -> tuple[float, float]:
    """Wall and CPU seconds (every thread of this process) to apply every input."""
    store = await EngageStore.open(path)
    try:
        await store.register(sources, now)
        store.use(catalog.build(sources))
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(inputs), 500):
            await store.apply_many(inputs[start : start + 500], now)
        return time.perf_counter() - started, time.process_time() - cpu
    finally:
        await store.close()


def peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


WRITE_KEY = "wk_bench"


def daemon_config(tmp: Path, sink_url: str, *, live: bool) -> Path:
    text = (
        '[server]\nlisten = "127.0.0.1:0"\n[logging]\naccess_log = false\nlevel = "warning"\n'
        f'[storage]\ndata_dir = "{tmp / "var"}"\nmin_free_disk_bytes = 0\n'
        f'[[sources]]\nname = "web"\nwrite_key = "{WRITE_KEY}"\n'
        '[identity]\nspace = "bench"\naccess_tokens = ["tok"]\n'
        '[engage]\nspace_id = "bench"\n'
        f'[[destinations]]\nname = "sink"\ntype = "webhook"\nurl = "{sink_url}"\n'
    )
    if live:
        for source in definitions():
            section = "audiences" if source.kind == "audience" else "computed_traits"
            query = source.query.replace('"', '\\"')
            text += f'[[{section}]]\nkey = "{source.key}"\nquery = "{query}"\n'
        text += "[[audiences]]\nkey = \"pro_users\"\nquery = \"trait('plan') = 'pro'\"\n"
        text += '[[audiences.destinations]]\nname = "sink"\n'
    path = tmp / "cdpd.toml"
    path.write_text(text)
    return path


async def through_daemon(
    tmp: Path, inputs: list[Any], *, live: bool, entries: int
) -> tuple[float, float, list[float]]:
    """Messages/s through the daemon, CPU seconds of this process (the daemon, and the
    client and sink that share it) per 1,000 messages over the same span, and entry latencies
    (s) when `live`."""
    from aiohttp import ClientSession, web

    from cdpd.app import running
    from cdpd.config import load

    received: dict[str, float] = {}
    delivered = [0]
    arrived = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        body = await request.json()
        for message in body.get("batch", [body]):
            delivered[0] += 1
            if "personas" in message.get("context", {}):
                received[str(message.get("userId"))] = time.perf_counter()
                arrived.set()
        return web.Response()

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    auth = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    try:
        config = load(daemon_config(tmp, f"http://127.0.0.1:{port}/hook", live=live))
        async with running(config) as server, ClientSession() as http:

            async def post(batch: list[dict[str, Any]]) -> None:
                async with http.post(
                    f"{server.url}/v1/batch", json={"batch": batch}, headers=auth
                ) as resp:
                    assert resp.status == 200, await resp.text()

            def applied() -> int:
                if server.engage is not None:
                    return server.engage.position.resolutions
                assert server.identity is not None
                return server.identity.committed_seq

            started, cpu = time.perf_counter(), time.process_time()
            batches = [[m for _, m, _ in inputs[i : i + 100]] for i in range(0, len(inputs), 100)]
            for group in range(0, len(batches), 8):
                await asyncio.gather(*(post(b) for b in batches[group : group + 8]))
            last = server.writer.last_seq
            while applied() < last:  # noqa: ASYNC110 (a position polled, as an operator would)
                await asyncio.sleep(0.05)
            rate = len(inputs) / (time.perf_counter() - started)
            cpu_per_1000 = (time.process_time() - cpu) / len(inputs) * 1000
            # Latency is measured with the destination's backlog delivered, so it is the
            # pipeline's own delay rather than a queue's.
            while delivered[0] < server.writer.last_seq:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            latencies = []
            for n in range(entries if live else 0):
                user = f"entry-{n}"
                identify = {"type": "identify", "userId": user, "traits": {"plan": "pro"}}
                await post([identify])
                acked = time.perf_counter()
                async with asyncio.timeout(30):
                    while user not in received:
                        arrived.clear()
                        await arrived.wait()
                latencies.append(received[user] - acked)
            return rate, cpu_per_1000, latencies
    finally:
        await runner.cleanup()


def end_to_end(args: argparse.Namespace) -> None:
    now = now_ms()
    inputs = messages(args.daemon_profiles, args.daemon_messages, now)
    with tempfile.TemporaryDirectory() as none_dir, tempfile.TemporaryDirectory() as live_dir:
        bare, bare_cpu, _ = asyncio.run(
            through_daemon(Path(none_dir), inputs, live=False, entries=0)
        )
        live, live_cpu, latencies = asyncio.run(
            through_daemon(Path(live_dir), inputs, live=True, entries=args.entries)
        )
    print(f"daemon: profiles {args.daemon_profiles}, messages {len(inputs)} posted to /v1/batch")
    print(
        f"daemon, no definitions:  {bare:9.0f} messages/s  {bare_cpu:5.2f} CPU s/1000 messages "
        "(ingest + identity)"
    )
    print(
        f"daemon, 31 live:         {live:9.0f} messages/s  {live_cpu:5.2f} CPU s/1000 messages "
        "(ingest + identity + Engage)"
    )
    print(f"ratio live / none:       {live / bare:9.2f} (CPU: {bare_cpu / live_cpu:.2f})")
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    print(f"entry latency, ack -> sink: p50 {p50:.0f} ms, p99 {p99:.0f} ms ({len(latencies)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profiles", type=int, default=100_000, help="profiles of the store benchmark"
    )
    parser.add_argument(
        "--messages", type=int, default=200_000, help="messages applied to the store"
    )
    parser.add_argument(
        "--daemon-profiles", type=int, default=20_000, help="profiles of the daemon run"
    )
    parser.add_argument(
        "--daemon-messages", type=int, default=60_000, help="messages posted to the daemon"
    )
    parser.add_argument(
        "--entries", type=int, default=200, help="audience entries timed for latency"
    )
    parser.add_argument("--only-daemon", action="store_true", help="run only the daemon end to end")
    args = parser.parse_args()
    if args.only_daemon:
        end_to_end(args)
        print(f"peak RSS:               {peak_rss_mb():9.0f} MB")
        return
    now = now_ms()
    inputs = messages(args.profiles, max(args.messages, args.profiles), now)
    sources = definitions()
    with tempfile.TemporaryDirectory() as tmp:
        bare_s, bare_cpu = asyncio.run(apply_all(Path(tmp, "none.sqlite3"), [], inputs, now))
        live_s, live_cpu = asyncio.run(apply_all(Path(tmp, "live.sqlite3"), sources, inputs, now))
        n = len(inputs)
        print(
            f"profiles {args.profiles}, messages {n}, "
            f"{len(AUDIENCES)} audiences + {len(TRAITS)} computed traits"
        )
        print(
            f"apply, no definitions:  {n / bare_s:9.0f} messages/s  "
            f"{bare_cpu / n * 1e6:6.0f} us CPU/message"
        )
        print(
            f"apply, all 30 live:     {n / live_s:9.0f} messages/s  "
            f"{live_cpu / n * 1e6:6.0f} us CPU/message"
        )
        print(f"ratio live / none:      {bare_s / live_s:9.2f} (CPU: {bare_cpu / live_cpu:.2f})")
        kept = catalog.build(sources)
        path = Path(tmp, "live.sqlite3")
        for query in PREVIEWS:
            plan = compile_query(query)
            times: list[float] = []
            cpus: list[float] = []
            result = None
            for _ in range(3):
                started, cpu = time.perf_counter(), time.process_time()
                result = preview(path, plan, kept, now)
                times.append(time.perf_counter() - started)
                cpus.append(time.process_time() - cpu)
            assert result is not None
            print(
                f"preview {statistics.median(times) * 1000:6.0f} ms "
                f"({statistics.median(cpus) * 1000:4.0f} ms CPU)  "
                f"{result.matching:6d}/{result.profiles} match  {query}"
            )
    end_to_end(args)
    print(f"peak RSS:               {peak_rss_mb():9.0f} MB")


if __name__ == "__main__":
    main()
