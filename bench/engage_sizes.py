"""What keeping audience sizes costs Engage's writes: the same messages applied through
`EngageStore.process`, alternately into a store with the `engage_sizes` / `engage_change_days`
triggers and into one with them dropped. Every message makes one entry and one computed value
(two `engage_values` rows and two `engage_changes` rows). Prints CPU microseconds per message
for each, the median of the runs, and their ratio.

    .venv/bin/python bench/engage_sizes.py [--profiles 20000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cdpd.engage import catalog  # noqa: E402
from cdpd.engage.catalog import Source  # noqa: E402
from cdpd.engage.inputs import ProfileMessage  # noqa: E402
from cdpd.engage.store import EngageStore  # noqa: E402

DEFINITIONS = [
    Source(key="buyers", kind="audience", query="event('Order Completed').count() >= 1"),
    Source(key="orders", kind="computed_trait", query="event('Order Completed').count()"),
]
NOW_MS = 1_780_000_000_000
BATCH = 500


async def apply_all(path: Path, profiles: int, *, triggers: bool) -> float:
    """CPU seconds to apply one order per profile, in batches."""
    store = await EngageStore.open(path)
    try:
        if not triggers:
            with sqlite3.connect(path) as conn:
                for name in ("values_counted", "values_uncounted", "changes_counted"):
                    conn.execute(f"DROP TRIGGER engage_{name}")
        await store.register(DEFINITIONS, NOW_MS)
        store.use(catalog.build(DEFINITIONS))
        message = {"type": "track", "event": "Order Completed", "timestamp": "2026-06-01T00:00:00Z"}
        started = time.process_time()
        for start in range(0, profiles, BATCH):
            inputs = [
                ProfileMessage(f"p{n}", {**message, "userId": f"u{n}"})
                for n in range(start, min(start + BATCH, profiles))
            ]
            await store.process(inputs, NOW_MS)
        return time.process_time() - started
    finally:
        await store.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=20_000, help="profiles (messages) per run")
    parser.add_argument("--runs", type=int, default=3, help="alternated runs of each kind")
    args = parser.parse_args()
    timings: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="cdpd-engage-sizes-") as tmp:
        for run in range(args.runs):
            for triggers in (False, True):
                path = Path(tmp) / f"engage-{run}-{triggers}.sqlite3"
                cpu_s = await apply_all(path, args.profiles, triggers=triggers)
                timings[triggers].append(cpu_s * 1e6 / args.profiles)
    without, with_ = statistics.median(timings[False]), statistics.median(timings[True])
    print(f"profiles: {args.profiles:,}, runs: {args.runs}, CPU us per message (median)")
    print(f"without the size triggers: {without:.1f}")
    print(f"with the size triggers:    {with_:.1f}")
    print(f"ratio: {with_ / without:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
