"""Console page benchmark: how long each page takes with millions of messages in the outbox.

Builds an outbox with `--messages` messages (about 200 bytes each), a week of per-minute flow
counts and latency buckets for two destinations, failed attempts and dead letters; starts the
real cdpd on it (its lanes already past the messages), signs a person in, and times every
console page for each window. Prints p50, p95 and max milliseconds per page.

The Privacy page gets `--fields` fields in the inbox (a tenth of them classified), and the
audience pages an Engage store with `--members` members in one audience and as many entries and
exits over the last 30 days.

    python bench/console.py [--messages 2000000] [--requests 20] [--fields 2000]
                            [--members 1000000] [--only TEXT,...]
"""

from __future__ import annotations

import argparse
import http.cookiejar
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.ingest import free_port, stop, wait_for_port  # noqa: E402

PASSWORD = "bench-password"  # noqa: S105 (a throwaway person in a temporary dir)
DESTINATIONS = ("hook_a", "hook_b")
TYPES = ("track", "page", "identify", "group")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2_000_000)
    parser.add_argument("--requests", type=int, default=20, help="timed requests per page")
    parser.add_argument("--fields", type=int, default=2000, help="fields in the privacy inbox")
    parser.add_argument("--members", type=int, default=1_000_000, help="audience members")
    parser.add_argument(
        "--only",
        default="",
        help="time only pages whose path contains one of these (comma-separated)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdpd-console-bench-") as tmp:
        root = Path(tmp)
        port = free_port()
        config = write_config(root, port)
        create_schema(config)
        started = time.perf_counter()
        fill(root / "var" / "outbox.sqlite3", args.messages)
        fill_privacy(root / "var" / "outbox.sqlite3", args.fields)
        fill_engage(root / "var" / "engage.sqlite3", args.members)
        size_mb = (root / "var" / "outbox.sqlite3").stat().st_size / 2**20
        print(
            f"outbox: {args.messages:,} messages, {size_mb:,.0f} MB,"
            f" filled in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        run_cli(config, ["users", "add", "bench", "--workspace", "bench", "--role", "owner",
                         "--password-stdin"], PASSWORD)  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "cdpd", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=HERE.parent,
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        )
        try:
            wait_for_port(port, proc, timeout_s=60)
            time_pages(f"http://127.0.0.1:{port}", args.requests, args.only)
        finally:
            stop(proc)
    return 0


def write_config(root: Path, port: int) -> Path:
    config = root / "cdpd.toml"
    hooks = "".join(
        f'[[destinations]]\nname = "{name}"\ntype = "webhook"\nurl = "http://127.0.0.1:9/{name}"\n'
        for name in DESTINATIONS
    )
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[storage]\ndata_dir = "{root / "var"}"\nmin_free_disk_bytes = 0\n'
        "[logging]\naccess_log = false\n"
        '[[sources]]\nname = "web"\nwrite_key = "wk_bench"\n'
        + hooks
        + AUDIENCES
        + '[[workspaces]]\nname = "bench"\nsources = ["web"]\naudiences = ["buyers", "orders"]\n'
        f"destinations = {list(DESTINATIONS)!r}\n".replace("'", '"')
    )
    return config


AUDIENCES = (
    '[[audiences]]\nkey = "buyers"\nquery = "event(\'Order 1\').count() >= 1"\n'
    '[[computed_traits]]\nkey = "orders"\nquery = "event(\'Order 1\').count()"\n'
)


def fill_privacy(path: Path, fields: int) -> None:
    db = sqlite3.connect(path)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    db.executemany(
        "INSERT INTO privacy_inbox VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            ("web", f"properties.f{i}", "yellow" if i % 3 else None, None, None, now, now, "x")
            for i in range(fields)
        ],
    )
    db.executemany(
        "INSERT INTO privacy_inventory VALUES (?, 'yellow', ?, 'bench')",
        [(f"properties.f{i}", now) for i in range(0, fields, 10)],
    )
    db.commit()
    db.close()


def fill_engage(path: Path, members: int) -> None:
    """Engage's tables as a version 2 file; `members` in `buyers`, each entered once in the
    last 30 days and half of them exited and entered again; a value of `orders` each. Then
    Engage's own migration to the current version counts them (timed)."""
    from cdpd.engage.syncs import SCHEMA as SYNCS
    from cdpd.engage.tables import POSITION, SCHEMA, create

    db = sqlite3.connect(path)
    db.executescript(f"{SCHEMA} {SYNCS} {POSITION} PRAGMA user_version = 2;")
    now_ms = int(time.time() * 1000)
    db.executemany(
        "INSERT INTO engage_definitions VALUES (?, ?, ?, ?, ?)",
        [
            ("buyers", "audience", "q", now_ms, now_ms),
            ("orders", "computed_trait", "q", now_ms, now_ms),
        ],
    )
    db.executemany(
        "INSERT INTO engage_values VALUES ('users', ?, ?, ?, ?)",
        (row for i in range(members) for row in (
            ("buyers", f"use_{i}", "true", now_ms), ("orders", f"use_{i}", "3", now_ms))),
    )  # fmt: skip
    span_ms = 30 * 86_400_000

    def changes() -> object:
        for i in range(members):
            at = now_ms - span_ms + i * span_ms // members
            yield ("buyers", f"use_{i}", "entered", "true", at)
            yield ("orders", f"use_{i}", "computed", "3", at)
            if i % 2:
                yield ("buyers", f"use_{i}", "exited", "false", at + 1)
                yield ("buyers", f"use_{i}", "entered", "true", at + 2)

    db.executemany(
        "INSERT INTO engage_changes (collection, key, id, change, value, at_ms)"
        " VALUES ('users', ?, ?, ?, ?, ?)",
        changes(),
    )
    db.commit()
    db.close()
    db = sqlite3.connect(path, isolation_level=None)
    started = time.perf_counter()
    create(db, str(path))
    print(
        f"engage: migrated {members:,} members to engage_sizes and engage_change_days"
        f" in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    db.close()


def run_cli(config: Path, args: list[str], stdin: str = "") -> None:
    subprocess.run(
        [sys.executable, "-m", "cdpd", *args, "--config", str(config)],
        input=stdin.encode(),
        check=True,
        capture_output=True,
        cwd=HERE.parent,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )


def create_schema(config: Path) -> None:
    """Let cdpd create and migrate its outbox (the outbox stats command does)."""
    outbox = str(config.parent / "var" / "outbox.sqlite3")
    code = (
        "import asyncio, pathlib; from cdpd.outbox import schema\n"
        "async def main():\n"
        f"    async with schema.connect(pathlib.Path({outbox!r})):\n"
        "        pass\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=HERE.parent)


def fill(path: Path, count: int) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")
    now = datetime.now(UTC)
    start = now - timedelta(days=7)
    step_s = 7 * 86400 / count

    def messages() -> object:
        for seq in range(1, count + 1):
            at = (start + timedelta(seconds=seq * step_s)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            kind = TYPES[seq % 4]
            payload = (
                f'{{"type":"{kind}","event":"Order {seq % 50}","userId":"u{seq % 10000}",'
                f'"messageId":"m{seq}","receivedAt":"{at}","properties":{{"n":{seq}}}}}'
            )
            yield (seq, f"m{seq}", "web", kind, "Order", f"u{seq % 10000}", None, at, payload)

    db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", messages())
    for name in DESTINATIONS:
        db.execute(
            "INSERT INTO consumers (name, kind, seq, updated_at) VALUES (?, 'delivery', ?, ?)",
            (f"delivery:{name}", count, now.isoformat()),
        )
    db.execute(
        "INSERT INTO consumers (name, kind, seq, updated_at)"
        " VALUES ('console:flow', 'console', ?, ?)",
        (count, now.isoformat()),
    )
    rows, latency, attempts, dead = [], [], [], []
    for minute_index in range(7 * 1440):
        minute = (start + timedelta(minutes=minute_index)).strftime("%Y-%m-%dT%H:%MZ")
        per_minute = count // (7 * 1440)
        for kind in TYPES:
            rows.append(("source", "web", minute, "received", kind, per_minute // 4))
        rows.append(("source", "web", minute, "rejected", "missing_event", 3))
        for name in DESTINATIONS:
            rows += [
                ("destination", name, minute, "received", "", per_minute),
                ("destination", name, minute, "filtered", "integrations object", 2),
                ("destination", name, minute, "delivered", "", per_minute - 3),
                ("destination", name, minute, "retried", "", 1),
                ("destination", name, minute, "failed", "", 1),
            ]
            latency += [(name, minute, bucket, random.randint(1, per_minute))
                        for bucket in (25, 50, 100, 250)]  # fmt: skip
            at = minute[:16] + ":00.000Z"
            seq = minute_index * per_minute + 1
            attempts.append((0, name, f"m{seq}", 1, at, 12.5, 500, "HTTP 500: down", "retrying"))
            dead.append((name, seq, f"m{seq}", "dead", 5, at, at, 500, "HTTP 500 (gave up)", at))
    db.executemany("INSERT INTO flow_counts VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.executemany("INSERT INTO flow_latency VALUES (?, ?, ?, ?)", latency)
    # the hourly rollups, as cdpd writes them alongside
    db.execute(
        "INSERT INTO flow_counts_hourly SELECT scope, name, substr(minute, 1, 13) || 'Z',"
        " metric, reason, sum(count) FROM flow_counts GROUP BY 1, 2, 3, 4, 5"
    )
    db.execute(
        "INSERT INTO flow_latency_hourly SELECT destination, substr(minute, 1, 13) || 'Z',"
        " bucket_ms, sum(count) FROM flow_latency GROUP BY 1, 2, 3"
    )
    db.executemany(
        "INSERT INTO attempts (delivery_id, destination, message_id, attempt, started_at,"
        " duration_ms, status, error, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        attempts,
    )
    db.executemany(
        "INSERT INTO deliveries (destination, seq, message_id, state, attempts, created_at,"
        " next_attempt_at, last_status, last_error, finished_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        dead,
    )
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def time_pages(base: str, requests: int, only: str = "") -> None:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    form = urllib.parse.urlencode({"name": "bench", "password": PASSWORD}).encode()
    opener.open(f"{base}/console/signin", form, timeout=30).read()
    pages = ["/console/w/bench/", "/console/w/bench/catalog", "/console/w/bench/catalog/webhook"]
    for window in ("10m", "1h", "24h", "7d"):
        pages += [
            f"/console/w/bench/sources/web?window={window}",
            f"/console/w/bench/destinations/hook_a?window={window}",
        ]
    pages += [
        "/console/w/bench/sources/web/protocols",
        "/console/w/bench/destinations/hook_a/errors/0?window=7d",
        "/console/w/bench/privacy",
        "/console/w/bench/audiences",
        "/console/w/bench/audiences/buyers",
        "/console/w/bench/audiences/orders",
    ]
    wanted = only.split(",")
    pages = [page for page in pages if any(text in page for text in wanted)]
    print("| page | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|")
    for page in pages:
        timings = []
        for _ in range(requests + 1):
            began = time.perf_counter()
            with opener.open(base + page, timeout=30) as resp:
                resp.read()
                assert resp.status == 200, (page, resp.status)
            timings.append((time.perf_counter() - began) * 1000)
        timings = sorted(timings[1:])  # the first warms the caches
        p95 = timings[min(len(timings) - 1, int(0.95 * len(timings)))]
        print(f"| {page} | {statistics.median(timings):.1f} | {p95:.1f} | {timings[-1]:.1f} |")


if __name__ == "__main__":
    raise SystemExit(main())
