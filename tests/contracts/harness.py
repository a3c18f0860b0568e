"""What the destination contract tests share: a destination's config entry, a real cdpd that
posts messages to a contract server and stops once its lane has done enough, the outbox rows
the tests read afterwards, and the check-config and catalog commands."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from cdpd import cli
from cdpd.app import running
from cdpd.delivery.lane import Lane
from tests.helpers import (
    FakeClock,
    config_text,
    delivery_statuses,
    destination_names,
    query,
)
from tests.integration.test_delivery import MakeConfig, recorded, send


def destination(kind: str, name: str, **settings: Any) -> str:
    """A `[[destinations]]` entry; each setting's value written as JSON, which TOML reads."""
    lines = [f'[[destinations]]\nname = "{name}"\ntype = "{kind}"']
    lines += [f"{key} = {msgspec.json.encode(value).decode()}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


@asynccontextmanager
async def posting(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    entries: str,
    messages: list[dict[str, Any]],
    clock: FakeClock | None = None,
) -> AsyncIterator[Lane]:
    """A cdpd with one destination (`entries` may add its actions) that `messages` have been
    posted to: its lane, while it runs."""
    async with running(make_config(entries), clock=clock) as server:
        (lane,) = server.delivery.lanes.values()
        await send(http, server, messages)
        yield lane


async def deliver(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    entries: str,
    messages: list[dict[str, Any]],
    *,
    recorded: int = 0,
    delivered: int = 0,
    settled: int = 0,
    timeout_s: float = 30,
) -> None:
    """Post `messages` through a cdpd (see `posting`) and stop it once its lane has recorded
    `recorded` attempts, `delivered` deliveries and `settled` deliveries delivered or dead."""
    async with posting(make_config, http, entries, messages) as lane:
        stats = lane.stats
        async with asyncio.timeout(timeout_s), stats.recorded:
            await stats.recorded.wait_for(
                lambda: (
                    stats.attempts >= recorded
                    and stats.delivered >= delivered
                    and stats.delivered + stats.dead >= settled
                )
            )


async def deliver_on_retry(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    entries: str,
    messages: list[dict[str, Any]],
    retry_after_s: float,
) -> None:
    """As `deliver`, on a fake clock: the first attempt, then the second `retry_after_s` later."""
    clock = FakeClock()
    async with posting(make_config, http, entries, messages, clock) as lane:
        await recorded(lane, 1)
        clock.advance(retry_after_s)
        await recorded(lane, 2)


async def settled(lane: Lane, count: int) -> None:
    """Until `count` deliveries are delivered or dead."""
    async with asyncio.timeout(30), lane.stats.recorded:
        await lane.stats.recorded.wait_for(lambda: lane.stats.delivered + lane.stats.dead >= count)


def states(data_dir: Path) -> dict[str, tuple[Any, ...]]:
    """Each delivery's (state, last status, last error), by message id."""
    return {
        s.message_id: (s.state, s.last_status, s.last_error)
        for name in destination_names(data_dir)
        for s in delivery_statuses(data_dir, name)
    }


def attempts(data_dir: Path) -> list[tuple[Any, ...]]:
    """Every attempt's (status, error, outcome), in order."""
    return query(data_dir, "SELECT status, error, outcome FROM attempts ORDER BY id")


def check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: str, *, exit_code: int = 2
) -> str:
    """`cdpd check-config` on a config holding `entry`, which must exit with `exit_code`:
    what it wrote to stderr."""
    path = tmp_path / "cdpd.toml"
    path.write_text(config_text(tmp_path / "var", entry))
    assert cli.main(["check-config", "--config", str(path)]) == exit_code
    return capsys.readouterr().err


def catalog_entry(capsys: pytest.CaptureFixture[str], kind: str) -> dict[str, Any]:
    """What `cdpd destinations --json` says of the destination type `kind`."""
    assert cli.main(["destinations", "--json"]) == 0
    catalog = {entry["type"]: entry for entry in msgspec.json.decode(capsys.readouterr().out)}
    entry: dict[str, Any] = catalog[kind]
    return entry
