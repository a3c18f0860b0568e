"""Delivery end to end: a real cdpd, real SQLite, local sinks with scripted answers, and a fake
clock for everything that waits (backoffs, retention), so no test sleeps through a backoff."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from cdpd.app import Running, running
from cdpd.config import Config
from cdpd.delivery.lane import Lane
from cdpd.model.timestamps import format_ms, parse_ms
from tests.helpers import (
    OTHER_WRITE_KEY,
    WRITE_KEY,
    FakeClock,
    basic_auth,
    delivery_statuses,
    query,
)
from tests.sink import Sink, hold, status

MakeConfig = Callable[..., Config]


def hook(name: str, url: str, **options: Any) -> str:
    lines = [f'[[destinations]]\nname = "{name}"\ntype = "webhook"\nurl = "{url}"']
    lines += [f"{key} = {_toml(value)}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def track(n: int, user: str = "u1", **extra: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user,
        "event": "Order Completed",
        "messageId": f"m{n}",
        **extra,
    }


async def send(
    http: aiohttp.ClientSession,
    server: Running,
    messages: list[dict[str, Any]],
    key: str = WRITE_KEY,
) -> None:
    headers = {"Authorization": basic_auth(key)}
    async with http.post(
        f"{server.url}/v1/batch", json={"batch": messages}, headers=headers
    ) as resp:
        assert resp.status == 200, await resp.text()


async def recorded(lane: Lane, attempts: int) -> None:
    """Wait until the lane has recorded `attempts` attempts."""
    async with asyncio.timeout(30), lane.stats.recorded:
        await lane.stats.recorded.wait_for(lambda: lane.stats.attempts >= attempts)


async def delivered(lane: Lane, count: int, timeout_s: float = 30) -> None:
    """Wait until the lane has recorded `count` deliveries."""
    async with asyncio.timeout(timeout_s), lane.stats.recorded:
        await lane.stats.recorded.wait_for(lambda: lane.stats.delivered >= count)


def deliveries(data_dir: Path, destination: str = "hook") -> list[tuple[Any, ...]]:
    """(message id, state, attempts, last status) of each message owed to the destination, from
    the delivery store (a message delivered on its first attempt has no recorded status)."""
    return [
        (s.message_id, s.state, s.attempts, s.last_status)
        for s in delivery_statuses(data_dir, destination)
    ]


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


# -- the happy path ----------------------------------------------------------------------------


async def test_every_message_reaches_the_webhook_once(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with Sink() as sink, running(make_config(hook("hook", sink.url))) as server:
        await send(http, server, [track(n, user=f"u{n}") for n in range(20)])
        await sink.wait_for_delivered(20)
        await recorded(server.delivery.lanes["hook"], 20)
    assert sorted(sink.message_ids) == sorted(f"m{n}" for n in range(20))
    first = sink.received[0]
    assert first.headers["X-Cdpd-Message-Id"] == first.messages[0]["messageId"]
    assert first.headers["Content-Type"] == "application/json"
    stored = dict(query(data_dir, "SELECT message_id, payload FROM messages"))
    assert all(r.body.decode() == stored[r.messages[0]["messageId"]] for r in sink.received)
    assert {state for _, state, _, _ in deliveries(data_dir)} == {"delivered"}
    # Delivered on their first attempts: the ledger of exceptions stays empty.
    assert query(data_dir, "SELECT count(*) FROM attempts") == [(0,)]


async def test_batches_of_batch_size(make_config: MakeConfig, http: aiohttp.ClientSession) -> None:
    config = make_config(hook("hook", "http://placeholder", batch_size=10, concurrency=1))
    async with Sink() as sink:
        config = _with_url(config, sink.url)
        async with running(config) as server:
            await send(http, server, [track(n) for n in range(25)])
            await sink.wait_for_delivered(25)
    assert all(len(r.messages) <= 10 for r in sink.received)
    assert all(msgspec.json.decode(r.body).keys() == {"batch"} for r in sink.received)
    assert sorted(sink.message_ids) == sorted(f"m{n}" for n in range(25))


def verify_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's check, as README.md gives it."""
    timestamp = headers["X-Cdpd-Timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(headers["X-Cdpd-Signature"], "v1=" + expected.hexdigest())


@pytest.mark.parametrize("batch_size", [1, 5])
async def test_signed_requests_verify(
    make_config: MakeConfig, http: aiohttp.ClientSession, batch_size: int
) -> None:
    async with Sink() as sink:
        options = hook("hook", sink.url, secret="s3cret", batch_size=batch_size)
        config = make_config(options + 'headers = { "X-Team" = "growth" }\n')
        async with running(config) as server:
            await send(http, server, [track(n) for n in range(5)])
            await sink.wait_for_delivered(5)
    for request in sink.received:
        assert verify_signature("s3cret", request.headers, request.body)
        assert not verify_signature("wrong", request.headers, request.body)
        assert request.headers["X-Team"] == "growth"


# -- retries and giving up ---------------------------------------------------------------------


async def test_5xx_is_retried_with_backoff_until_delivered(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    clock = FakeClock()
    async with Sink() as sink:
        sink.script.extend([status(500, body="down"), status(503)])
        async with running(make_config(hook("hook", sink.url)), clock=clock) as server:
            lane = server.delivery.lanes["hook"]
            await send(http, server, [track(1)])
            await recorded(lane, 1)
            ((_, state, attempts, last_status),) = deliveries(data_dir)
            assert (state, attempts, last_status) == ("retrying", 1, 500)
            clock.advance(300)  # past the longest first backoff
            await recorded(lane, 2)
            clock.advance(300)
            await recorded(lane, 3)
    assert deliveries(data_dir) == [("m1", "delivered", 3, 200)]
    attempts = query(data_dir, "SELECT attempt, status, error, outcome FROM attempts ORDER BY id")
    assert attempts == [
        (1, 500, "HTTP 500: down", "retrying"),
        (2, 503, "HTTP 503", "retrying"),
        (3, 200, None, "delivered"),
    ]
    assert len(sink.received) == 3


async def test_retry_after_is_honoured(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    clock = FakeClock()
    async with Sink() as sink:
        sink.script.append(status(429, headers={"Retry-After": "600"}))
        async with running(make_config(hook("hook", sink.url)), clock=clock) as server:
            lane = server.delivery.lanes["hook"]
            await send(http, server, [track(1)])
            await recorded(lane, 1)
            ((last, upcoming),) = query(
                data_dir, "SELECT last_attempt_at, next_attempt_at FROM deliveries"
            )
            assert upcoming >= _plus_seconds(last, 600)
            clock.advance(601)
            await recorded(lane, 2)
    assert deliveries(data_dir) == [("m1", "delivered", 2, 200)]


@pytest.mark.parametrize(
    ("code", "unhealthy"), [(400, False), (404, False), (401, True), (403, True)]
)
async def test_permanent_failures_are_dead_at_once(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    code: int,
    unhealthy: bool,
) -> None:
    async with (
        Sink(default=status(code, body="nope")) as sink,
        running(make_config(hook("hook", sink.url))) as server,
    ):
        lane = server.delivery.lanes["hook"]
        await send(http, server, [track(1)])
        await recorded(lane, 1)
        assert lane.stats.unhealthy is unhealthy
        assert lane.stats.errors_by_status == {str(code): 1}
    assert deliveries(data_dir) == [("m1", "dead", 1, code)]
    ((error,),) = query(data_dir, "SELECT last_error FROM deliveries")
    assert error == f"HTTP {code}: nope (status {code} is not retried)"


async def test_dead_only_after_the_window_and_three_attempts(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    clock = FakeClock()
    retry = "[delivery.retry]\nretry_window_s = 100\nmin_attempts = 3\nbackoff_max_s = 30\n"
    async with (
        Sink(default=status(502)) as sink,
        running(make_config(retry + hook("hook", sink.url)), clock=clock) as server,
    ):
        lane = server.delivery.lanes["hook"]
        await send(http, server, [track(1)])
        for attempt in range(1, 20):
            await recorded(lane, attempt)
            if deliveries(data_dir)[0][1] == "dead":
                break
            clock.advance(30)
    ((_, state, attempts, _),) = deliveries(data_dir)
    assert state == "dead"
    assert attempts >= 3
    ((first, last),) = query(data_dir, "SELECT first_attempt_at, last_attempt_at FROM deliveries")
    assert last >= _plus_seconds(first, 100)
    assert len(sink.received) == attempts


async def test_a_retry_read_while_that_retry_is_in_flight_does_not_send_it_twice(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    """The lane reads due retries while one is in flight; that read sees the row as it was
    before the attempt's outcome was committed. Held until the attempt has settled, it must
    still not send the message a second time."""
    clock = FakeClock()
    async with (
        Sink(default=status(502)) as sink,
        running(make_config(hook("hook", sink.url)), clock=clock) as server,
    ):
        lane = server.delivery.lanes["hook"]
        await send(http, server, [track(1)])
        await recorded(lane, 1)
        assert lane._run is not None
        reader = lane._run.reader
        read_due = reader.due

        async def due_read_before_a_settle(now_at: str, limit: int) -> Any:
            rows = await read_due(now_at, limit)
            await asyncio.sleep(0.3)  # the attempt in flight settles meanwhile
            return rows

        reader.due = due_read_before_a_settle  # type: ignore[method-assign]
        clock.advance(600)
        await recorded(lane, 2)
        await asyncio.sleep(1)  # a duplicate would have gone out by now
        reader.due = read_due  # type: ignore[method-assign]
    assert len(sink.received) == 2
    assert deliveries(data_dir) == [("m1", "retrying", 2, 502)]


async def test_timeouts_and_refused_connections_are_retried(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    never = asyncio.Event()
    async with Sink(default=hold(never)) as sink:
        config = make_config(
            hook("slow", sink.url, timeout_s=0.2) + hook("gone", closed_port_url())
        )
        async with running(config) as server:
            await send(http, server, [track(1)])
            await recorded(server.delivery.lanes["slow"], 1)
            await recorded(server.delivery.lanes["gone"], 1)
            never.set()
    slow = query(
        data_dir, "SELECT state, last_status, last_error FROM deliveries WHERE destination = 'slow'"
    )
    gone = query(
        data_dir, "SELECT state, last_status, last_error FROM deliveries WHERE destination = 'gone'"
    )
    assert slow == [("retrying", None, "no answer within 0.2 s")]
    assert gone[0][:2] == ("retrying", None)
    assert "ClientConnectorError" in gone[0][2]


# -- isolation and ordering --------------------------------------------------------------------


@pytest.mark.parametrize("trouble", ["refused", "hung"])
async def test_a_dead_destination_never_delays_another(
    make_config: MakeConfig, http: aiohttp.ClientSession, trouble: str
) -> None:
    never = asyncio.Event()
    async with Sink() as healthy, Sink(default=hold(never)) as stuck:
        bad_url = closed_port_url() if trouble == "refused" else stuck.url
        config = make_config(
            hook("bad", bad_url, concurrency=2, timeout_s=30) + hook("good", healthy.url)
        )
        async with running(config) as server:
            for start in range(0, 300, 100):
                await send(
                    http, server, [track(n, user=f"u{n}") for n in range(start, start + 100)]
                )
            await delivered(server.delivery.lanes["good"], 300, timeout_s=15)
            assert sorted(healthy.message_ids) == sorted(f"m{n}" for n in range(300))
            assert server.delivery.lanes["bad"].stats.delivered == 0
            never.set()


async def test_user_ordering_holds_later_messages_while_one_retries(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    clock = FakeClock()
    async with Sink() as sink:
        sink.by_message["m1"] = deque([status(500), status(500)])
        config = make_config(hook("hook", sink.url, ordering="user"))
        async with running(config, clock=clock) as server:
            lane = server.delivery.lanes["hook"]
            await send(http, server, [track(1, "u1"), track(2, "u1"), track(3, "u2")])
            await sink.wait_for(lambda s: "m3" in s.message_ids)
            await recorded(lane, 2)
            assert "m2" not in sink.message_ids  # held behind m1
            clock.advance(300)
            await recorded(lane, 3)
            clock.advance(300)
            await sink.wait_for(lambda s: "m2" in s.message_ids)
    order = [m for m in sink.message_ids if m in ("m1", "m2")]
    assert order == ["m1", "m2"]


# -- who gets what -----------------------------------------------------------------------------


async def test_integrations_object_and_destination_filters(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    async with Sink() as orders, Sink() as people, Sink() as backend:
        config = make_config(
            hook("orders", orders.url, events=["Order Completed"], types=["track"])
            + hook("people", people.url, types=["identify"])
            + hook("backend-only", backend.url, sources=["backend"], exclude_events=["Ping"])
        )
        async with running(config) as server:
            await send(
                http,
                server,
                [
                    track(1),
                    track(2, event="Cart Viewed"),
                    {"type": "identify", "userId": "u1", "messageId": "m3"},
                    track(4, integrations={"All": False, "Webhooks": True}),
                    track(5, integrations={"orders": False}),
                    track(6, integrations={"All": False, "orders": {"option": 1}}),
                ],
            )
            await send(http, server, [track(7), track(8, event="Ping")], key=OTHER_WRITE_KEY)
            await orders.wait_for_delivered(4)
            await people.wait_for_delivered(1)
            await backend.wait_for_delivered(1)
            await asyncio.sleep(0.1)  # time for anything more to go out
    assert sorted(orders.message_ids) == ["m1", "m4", "m6", "m7"]
    assert people.message_ids == ["m3"]
    assert backend.message_ids == ["m7"]


# -- helpers -----------------------------------------------------------------------------------


def _with_url(config: Config, url: str) -> Config:
    destinations = [msgspec.structs.replace(d, url=url) for d in config.destinations]
    return msgspec.structs.replace(config, destinations=destinations)


def _plus_seconds(at: str, seconds: float) -> str:
    return format_ms(parse_ms(at) + round(seconds * 1000))


async def test_concurrency_cap(make_config: MakeConfig, http: aiohttp.ClientSession) -> None:
    release = asyncio.Event()
    async with (
        Sink(default=hold(release)) as sink,
        running(make_config(hook("hook", sink.url, concurrency=3))) as server,
    ):
        await send(http, server, [track(n, user=f"u{n}") for n in range(10)])
        await sink.wait_for_requests(3)
        # Every worker is busy: nothing more goes out until one is answered.
        await asyncio.sleep(0.1)  # time for anything more to go out
        assert sink.arrived == 3
        assert server.delivery.lanes["hook"].stats.in_flight == 3
        release.set()
        await delivered(server.delivery.lanes["hook"], 10)


async def test_rate_limit(make_config: MakeConfig, http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    async with Sink() as sink:
        config = make_config(hook("hook", sink.url, rate_limit_per_s=2, concurrency=4))
        async with running(config, clock=clock) as server:
            lane = server.delivery.lanes["hook"]
            await send(http, server, [track(n, user=f"u{n}") for n in range(6)])
            await delivered(lane, 2)  # the bucket starts full: two requests at once
            await asyncio.sleep(0.1)  # time for anything more to go out
            assert lane.stats.delivered == 2
            clock.advance(0.5)  # one more token
            await delivered(lane, 3)
            clock.advance(1.5)  # three seconds' worth, but the bucket holds two
            await delivered(lane, 5)
            clock.advance(0.5)
            await delivered(lane, 6)
    assert len(sink.received) == 6
