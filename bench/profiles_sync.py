"""Profiles Sync benchmark: a sync after a few new messages on a large identity store, reading
the whole store (what every sync did before change numbers) against reading what changed, in
the same run.

1. Resolves --profiles sign-ups (user id, anonymous id, email, three traits: one profile each)
   into a fresh identity store, with the identity stage's own functions, in its batch size.
2. Loads it into a SQLite warehouse (or PostgreSQL with --dsn) through the incremental read
   from change 0 (a new warehouse's first sync), and copies that state for the whole-store
   read (SQLite), or loads a second database (PostgreSQL).
3. Each round resolves --new messages (new users, trait changes of known users, and second
   devices that merge into known users), then syncs both warehouses: the whole store, then
   what changed. Prints rows read from the identity store and seconds for each, and the ratio.

    .venv/bin/python bench/profiles_sync.py [--profiles 100000] [--new 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import uvloop

from cdpd.config import Config, IdentityConfig, PostgresWarehouse, SqliteWarehouse, Warehouse
from cdpd.identity import profiles_rows, store
from cdpd.identity.graph import Graph
from cdpd.identity.identifiers import Rules
from cdpd.identity.profiles_sync import Progress, load_changes, load_everything
from cdpd.identity.stage import resolve_messages
from cdpd.model.timestamps import format_ms, now_ms
from cdpd.outbox.consumers import Message
from cdpd.warehouse.sinks import open_sink

BATCH_MESSAGES = 2000  # the identity stage's default batch
MAX_COLUMNS = 1600
_encode = msgspec.json.Encoder()


class Store:
    """An identity store written as the identity stage writes it, one batch per transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rules = Rules(IdentityConfig(space="bench", access_tokens=["t"]))
        self.graph = Graph()
        self.seq = 0
        self.at_ms = now_ms()

    def resolve(self, payloads: list[dict[str, Any]]) -> None:
        with store.connect(self.path) as conn:
            for start in range(0, len(payloads), BATCH_MESSAGES):
                messages = [self._message(p) for p in payloads[start : start + BATCH_MESSAGES]]
                resolutions = resolve_messages(self.graph, self.rules, messages)
                store.save_batch(conn, self.graph, resolutions, self.seq)

    def _message(self, payload: dict[str, Any]) -> Message:
        self.seq += 1
        self.at_ms += 1
        return Message(
            seq=self.seq,
            message_id=f"m{self.seq}",
            source="web",
            type=str(payload["type"]),
            event=None,
            user_id=payload.get("userId"),
            anonymous_id=payload.get("anonymousId"),
            received_at=format_ms(self.at_ms),
            payload=_encode.encode(payload).decode(),
        )


def sign_up(n: int) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": f"user-{n}",
        "anonymousId": f"anon-{n}",
        "traits": {"email": f"user-{n}@example.com", "plan": "free", "name": f"User {n}"},
    }


def new_messages(rng: random.Random, known: int, count: int, round_no: int) -> list[dict[str, Any]]:
    """Two in five new users, two in five trait changes, one in five a second device merged
    into a known user (its anonymous page view first, then the identify that merges it)."""
    found: list[dict[str, Any]] = []
    while len(found) < count:
        kind = rng.random()
        if kind < 0.4:
            found.append(sign_up(known + round_no * count + len(found)))
        elif kind < 0.8:
            user = rng.randrange(known)
            found.append({"type": "identify", "userId": f"user-{user}", "traits": {"plan": "pro"}})
        else:
            user, device = rng.randrange(known), f"phone-{round_no}-{len(found)}"
            found.append({"type": "page", "anonymousId": device, "name": "Home"})
            found.append({"type": "identify", "anonymousId": device, "userId": f"user-{user}"})
    return found[:count]


def report(label: str, progress: Progress, seconds: float) -> None:
    written = sum(progress.written.values())
    print(
        f"  {label:<14} rows read {progress.rows_read:>9,}  written {written:>9,}  {seconds:7.3f} s"
    )


async def timed(call: Any) -> tuple[Progress, float]:
    started = time.perf_counter()
    progress = await call
    return progress, time.perf_counter() - started


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="cdpd-bench-psync-") as tmp:
        folder = Path(tmp)
        identity = Store(folder / "identity.sqlite3")
        started = time.perf_counter()
        identity.resolve([sign_up(n) for n in range(args.profiles)])
        print(
            f"identity store: {args.profiles:,} profiles in {time.perf_counter() - started:.1f} s"
        )
        whole, changed = await warehouses(args, folder)
        async with open_sink_for(changed) as sink:
            progress, seconds = await timed(load_changes(identity.path, sink, MAX_COLUMNS))
        report("first sync", progress, seconds)
        if isinstance(changed, SqliteWarehouse):
            assert changed.path is not None
            assert isinstance(whole, SqliteWarehouse)
            shutil.copyfile(changed.path, str(whole.path))
        else:
            async with open_sink_for(whole) as sink:
                await load_everything(identity.path, sink, MAX_COLUMNS)
        rng = random.Random(13)
        ratios = []
        for round_no in range(args.rounds):
            identity.resolve(new_messages(rng, args.profiles, args.new, round_no))
            print(f"round {round_no + 1}: {args.new} new messages")
            async with open_sink_for(whole) as sink:
                before, before_s = await timed(load_everything(identity.path, sink, MAX_COLUMNS))
            report("whole store", before, before_s)
            async with profiles_reader(identity.path) as conn:
                read_started = time.perf_counter()
                await profiles_rows.everything(conn)
                print(f"  {'(its read)':<14} {'':>40}{time.perf_counter() - read_started:7.3f} s")
            async with open_sink_for(changed) as sink:
                after, after_s = await timed(load_changes(identity.path, sink, MAX_COLUMNS))
            report("what changed", after, after_s)
            ratios.append(before_s / after_s)
            print(
                f"  ratio: {before.rows_read / max(after.rows_read, 1):,.0f}x fewer rows read,"
                f" {before_s / after_s:,.0f}x faster"
            )
        print(f"speed-up per round (same run): {', '.join(f'{r:,.0f}x' for r in ratios)}")
    return 0


async def warehouses(args: argparse.Namespace, folder: Path) -> tuple[Warehouse, Warehouse]:
    if args.dsn is None:
        return (
            SqliteWarehouse(name="whole", path=str(folder / "whole.sqlite3")),
            SqliteWarehouse(name="changed", path=str(folder / "changed.sqlite3")),
        )
    # Two names in one database would share the cdpd_profiles schema: the whole-store read
    # needs a database of its own.
    if args.whole_dsn is None:
        sys.exit("--dsn needs --whole-dsn (a second, empty database)")
    return (
        PostgresWarehouse(name="whole", dsn=args.whole_dsn),
        PostgresWarehouse(name="changed", dsn=args.dsn),
    )


def open_sink_for(warehouse: Warehouse) -> Any:
    return open_sink(Config(), warehouse)  # the warehouses name their own paths


def profiles_reader(path: Path) -> Any:
    return store.connect_reader(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=100_000, help="profiles in the store")
    parser.add_argument("--new", type=int, default=100, help="new messages before each sync")
    parser.add_argument("--rounds", type=int, default=3, help="syncs measured")
    parser.add_argument("--dsn", help="a PostgreSQL warehouse (empty database) for the read")
    parser.add_argument("--whole-dsn", help="with --dsn: a second empty database")
    return uvloop.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
