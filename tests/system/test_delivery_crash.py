"""`kill -9` while deliveries are in flight, then a restart: every message still arrives, and
the only duplicates are attempts that were in flight at the crash (same messageId header)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import config_file, post_tracks, spawn_cdpd
from tests.sink import Sink, hold, status

pytestmark = pytest.mark.system

MESSAGES = 2000
CONCURRENCY = 4
KILL_AFTER = 500


async def test_kill_9_during_delivery_loses_nothing(tmp_path: Path, data_dir: Path) -> None:
    release = asyncio.Event()
    async with Sink() as sink:
        hook = f'[[destinations]]\nname = "hook"\ntype = "webhook"\nurl = "{sink.url}"\n'
        config = config_file(tmp_path, data_dir, hook + f"concurrency = {CONCURRENCY}\n")
        daemon = await spawn_cdpd(config)
        await post_tracks(daemon.url, MESSAGES)

        await sink.wait_for_requests(KILL_AFTER, timeout_s=30)
        sink.default = hold(release)  # from now on attempts hang: some are in flight
        await sink.wait_for(lambda s: s.arrived >= len(s.received) + CONCURRENCY, timeout_s=30)
        daemon.proc.kill()
        assert await daemon.proc.wait() == -9
        release.set()
        sink.default = status(200)

        again = await spawn_cdpd(config)
        await sink.wait_for(lambda s: len(set(s.message_ids)) >= MESSAGES, timeout_s=60)
        assert await again.stop() == 0

    delivered = Counter(sink.message_ids)
    assert set(delivered) == {f"m{n}" for n in range(MESSAGES)}
    duplicates = {m for m, count in delivered.items() if count > 1}
    # Only attempts that were in flight (sent, or answered but not yet recorded) can repeat:
    # at most one per concurrency slot.
    assert len(duplicates) <= CONCURRENCY
    for request in sink.received:
        (message,) = request.messages
        assert request.headers["X-Cdpd-Message-Id"] == message["messageId"]


# name: (concurrency, batch_size, requests a second: each lane takes about 10 s for all)
LANES = {"a": (4, 10, 6), "b": (2, 1, 60), "c": (3, 25, 2)}
BACKLOG = 600


async def test_kill_9_with_a_backlog_and_several_destinations_resends_only_what_was_in_flight(
    tmp_path: Path, data_dir: Path
) -> None:
    sinks = {name: Sink() for name in LANES}
    for sink in sinks.values():
        await sink.__aenter__()
    try:
        # Rate limits keep every lane in the middle of its backlog when the daemon is killed.
        entries = "".join(
            f'[[destinations]]\nname = "{name}"\ntype = "webhook"\nurl = "{sinks[name].url}"\n'
            f"concurrency = {concurrency}\nbatch_size = {batch}\nrate_limit_per_s = {rate}\n"
            for name, (concurrency, batch, rate) in LANES.items()
        )
        config = config_file(tmp_path, data_dir, entries)
        daemon = await spawn_cdpd(config)
        await post_tracks(daemon.url, BACKLOG)
        for sink in sinks.values():
            await sink.wait_for(lambda s: len(s.message_ids) >= 40, timeout_s=30)
        daemon.proc.kill()
        assert await daemon.proc.wait() == -9
        assert all(len(set(sink.message_ids)) < BACKLOG for sink in sinks.values())

        again = await spawn_cdpd(config)
        for sink in sinks.values():
            await sink.wait_for(lambda s: len(set(s.message_ids)) >= BACKLOG, timeout_s=90)
        assert await again.stop() == 0
    finally:
        for sink in sinks.values():
            await sink.__aexit__(None, None, None)

    for name, (concurrency, batch, _) in LANES.items():
        delivered = Counter(sinks[name].message_ids)
        assert set(delivered) == {f"m{n}" for n in range(BACKLOG)}, name
        duplicates = [m for m, count in delivered.items() if count > 1]
        # The bound: what was in flight at the crash, at most concurrency x batch_size.
        assert len(duplicates) <= concurrency * batch, (name, len(duplicates))
