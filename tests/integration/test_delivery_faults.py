"""Delivery when things go wrong that are not a destination's plain error answer: redirects,
disabled destinations, cdpd's own outbox operations or code failing."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cdpd.app import running
from cdpd.delivery import lane as lane_run
from cdpd.delivery.store import SqliteLaneReader
from tests.helpers import query
from tests.integration.test_delivery import (
    MakeConfig,
    delivered,
    deliveries,
    hook,
    recorded,
    send,
    track,
)
from tests.integration.test_delivery_operations import ADMIN, BEARER, run_cli
from tests.sink import Sink, status


async def test_a_redirect_is_not_followed(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with (
        Sink() as elsewhere,
        Sink(default=status(302, headers={"Location": elsewhere.url})) as sink,
        running(make_config(hook("hook", sink.url))) as server,
    ):
        await send(http, server, [track(1)])
        await recorded(server.delivery.lanes["hook"], 1)
    assert elsewhere.arrived == 0
    assert deliveries(data_dir) == [("m1", "dead", 1, 302)]


async def test_a_batch_carries_an_idempotency_key_of_its_message_ids(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with Sink() as sink:
        config = make_config(hook("hook", sink.url, batch_size=50, concurrency=1))
        async with running(config) as server:
            await send(http, server, [track(n) for n in range(3)])
            await delivered(server.delivery.lanes["hook"], 3)
    for request in sink.received:
        ids = [m["messageId"] for m in request.messages]
        expected = hashlib.sha256("\n".join(ids).encode()).hexdigest()
        assert request.headers["Idempotency-Key"] == expected


async def test_a_disabled_destination_gives_up_its_deliveries_and_refuses_replay(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with Sink(default=status(503)) as sink:
        async with running(make_config(hook("hook", sink.url))) as server:
            await send(http, server, [track(1)])
            await recorded(server.delivery.lanes["hook"], 1)
        async with running(make_config(ADMIN + hook("hook", sink.url, enabled=False))) as server:
            assert "hook" not in server.delivery.lanes
            await send(http, server, [track(2)])
            assert query(data_dir, "SELECT message_id, state, last_error FROM deliveries") == [
                ("m1", "dead", "the destination is disabled")
            ]
            async with http.post(
                f"{server.url}/admin/replay",
                json={"destination": "hook", "dead": True},
                headers=BEARER,
            ) as resp:
                assert resp.status == 409
                assert (await resp.json())["code"] == "destination_disabled"
            code = await run_cli(
                "replay", "--destination", "hook", "--dead", "--config", str(tmp_path / "cdpd.toml")
            )
            assert code == 2
            assert "'hook' is disabled" in capsys.readouterr().err
    assert query(data_dir, "SELECT state FROM deliveries") == [("dead",)]  # m2 never owed


async def test_a_failing_outbox_operation_is_retried_not_fatal(
    make_config: MakeConfig, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_read = SqliteLaneReader.new_messages
    failures = 0

    async def read_failing_twice(self: SqliteLaneReader, *args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise OSError("database disk image is malformed")
        return await real_read(self, *args, **kwargs)

    monkeypatch.setattr(SqliteLaneReader, "new_messages", read_failing_twice)
    async with Sink() as sink, running(make_config(hook("hook", sink.url))) as server:
        await send(http, server, [track(1)])
        await delivered(server.delivery.lanes["hook"], 1)
        assert failures == 2
        await send(http, server, [track(2)])  # ingest and the lane both carry on
        await delivered(server.delivery.lanes["hook"], 2)
    assert sorted(sink.message_ids) == ["m1", "m2"]


async def test_a_lane_that_fails_is_restarted_with_its_deliveries_put_back(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_judge = lane_run._Run._judge_destination
    failed = asyncio.Event()

    def judge_failing_once(self: lane_run._Run, *args: Any, **kwargs: Any) -> Any:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("a bug in the lane")
        return real_judge(self, *args, **kwargs)

    monkeypatch.setattr(lane_run._Run, "_judge_destination", judge_failing_once)
    async with (
        Sink() as sink,
        Sink() as other,
        running(make_config(hook("hook", sink.url) + hook("other", other.url))) as server,
    ):
        await send(http, server, [track(1)])
        await delivered(server.delivery.lanes["hook"], 1, timeout_s=20)
        await delivered(server.delivery.lanes["other"], 1)
        await send(http, server, [track(2)])
        await delivered(server.delivery.lanes["hook"], 2)
        await delivered(server.delivery.lanes["other"], 2)
    assert failed.is_set()
    # The attempt the failure lost (in whichever lane it hit) is made again: at least once,
    # never lost.
    assert sorted(sink.message_ids + other.message_ids) == ["m1", "m1", "m1", "m2", "m2"]
    assert {state for _, state, _, _ in deliveries(data_dir)} == {"delivered"}


async def test_a_non_ascii_admin_token_is_refused_not_a_crash(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with running(make_config(ADMIN)) as server:
        headers = {"Authorization": "Bearer adm1nü".encode().decode("latin-1")}
        async with http.get(f"{server.url}/admin/deliveries", headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["code"] == "invalid_admin_token"
