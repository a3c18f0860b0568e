"""The official segment-analytics-python client, unchanged, pointed at cdpd with `host=`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from segment.analytics import Client
from segment.analytics import request as segment_request

from cdpd.app import Running
from cdpd.model.timestamps import parse_ms
from tests.helpers import WRITE_KEY, query, rejects

EVENTS = 5000


def send_mixed(client: Client, count: int) -> list[str]:
    """Send `count` messages of every kind; returns their messageIds."""
    sent: list[str] = []
    calls: list[Any] = [
        lambda n: client.identify(f"user-{n}", {"email": f"user{n}@example.com", "plan": "pro"}),
        lambda n: client.track(
            f"user-{n}",
            "Order Completed",
            {"order_id": f"o-{n}", "total": 27.5, "products": [{"sku": "45790-32", "price": 19}]},
            timestamp=datetime(2026, 11, 1, 12, 0, tzinfo=UTC),
        ),
        lambda n: client.page(anonymous_id=f"anon-{n}", name="Home", properties={"path": "/"}),
        lambda n: client.screen(f"user-{n}", name="Settings"),
        lambda n: client.group(f"user-{n}", f"group-{n % 10}", {"name": "Initech"}),
        lambda n: client.alias(f"anon-{n}", f"user-{n}"),
    ]
    for n in range(count):
        ok, message = calls[n % len(calls)](n)
        assert ok
        sent.append(message["messageId"])
    return sent


@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
async def test_every_message_is_stored_exactly_once(
    cdpd: Running, data_dir: Path, use_gzip: bool
) -> None:
    errors: list[Any] = []
    client = Client(
        WRITE_KEY,
        host=cdpd.url,
        gzip=use_gzip,
        upload_interval=0.05,
        max_queue_size=EVENTS + 100,
        on_error=lambda error, batch: errors.append(error),
    )
    try:
        sent = await asyncio.to_thread(send_mixed, client, EVENTS)
        await asyncio.to_thread(client.flush)
    finally:
        await asyncio.to_thread(client.join)
    assert errors == []
    stored = query(data_dir, "SELECT message_id, count(*) FROM messages GROUP BY message_id")
    assert len(stored) == EVENTS
    assert {message_id for message_id, _ in stored} == set(sent)
    assert {count for _, count in stored} == {1}
    assert rejects(data_dir) == []
    kinds = dict(query(data_dir, "SELECT type, count(*) FROM messages GROUP BY type"))
    assert kinds == {
        kind: EVENTS // 6 + (1 if i < EVENTS % 6 else 0)
        for i, kind in enumerate(["identify", "track", "page", "screen", "group", "alias"])
    }


class _ClockAnHourAhead(datetime):
    """The client device's clock: an hour fast."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) + timedelta(hours=1)


async def test_a_skewed_client_clock_is_corrected(
    cdpd: Running, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The library stamps sentAt with its own clock when it sends; the event happened 5 s
    # before that by the same (fast) clock.
    monkeypatch.setattr(segment_request, "datetime", _ClockAnHourAhead)
    client = Client(WRITE_KEY, host=cdpd.url, sync_mode=True)
    happened = _ClockAnHourAhead.now(UTC) - timedelta(seconds=5)
    await asyncio.to_thread(client.track, "user-1", "Signed Up", timestamp=happened)
    ((original, timestamp, received),) = query(
        data_dir,
        "SELECT json_extract(payload, '$.originalTimestamp'), json_extract(payload, '$.timestamp'),"
        " received_at FROM messages",
    )
    assert parse_ms(original) - parse_ms(received) > 3500_000  # as the device saw it
    # Corrected onto the server's clock: about 5 s before it was received.
    assert 4_000 <= parse_ms(received) - parse_ms(timestamp) <= 7_000
