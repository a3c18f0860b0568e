"""Protocols with the official segment-analytics-python client, unchanged: violations are
written into the stored message, blocked messages are answered with success and kept apart."""

from __future__ import annotations

import asyncio
from pathlib import Path

from segment.analytics import Client

from cdpd import config as cdpd_config
from cdpd.app import running
from tests.governance_plans import governed_config, write_plan
from tests.helpers import WRITE_KEY, query, stored_payloads

SETTINGS = """[sources.protocols.track]
allowUnplannedEvents = false
allowPropertiesOnViolations = false
[sources.protocols.identify]
allowUnplannedTraits = false
"""


def send(client: Client) -> None:
    client.track("u1", "Order Completed", {"order_id": "o1", "revenue": "12"})
    client.track("u1", "Order Completed", {"order_id": "o2", "revenue": 12.5}, context={
        "protocols": {"event_version": 2}})  # fmt: skip
    client.track("u1", "Unplanned Thing", {"x": 1})
    client.identify("u1", {"email": "a@example.com", "favourite": "blue"})
    client.flush()


async def test_the_python_client_gets_success_and_the_verdicts_are_stored(
    tmp_path: Path, data_dir: Path
) -> None:
    plan = write_plan(tmp_path / "plan.json")
    path = tmp_path / "cdpd.toml"
    path.write_text(governed_config(data_dir, plan, SETTINGS))
    errors: list[object] = []
    async with running(cdpd_config.load(path)) as server:
        client = Client(
            WRITE_KEY, host=server.url, sync_mode=True, on_error=lambda e, b: errors.append(e)
        )
        await asyncio.to_thread(send, client)
    assert errors == []
    first, second, identify = stored_payloads(data_dir)
    assert first["properties"] == {"order_id": "o1"}
    assert first["context"]["protocols"]["omitted_on_violation"] == ["revenue"]
    assert first["context"]["protocols"]["violations"] == [
        {
            "type": "Invalid Type",
            "field": "properties.revenue",
            "description": "Invalid type. Expected: number, given: string",
        }
    ]
    # Version 2 plans order_id as an integer and nothing else.
    assert [v["field"] for v in second["context"]["protocols"]["violations"]] == [
        "properties.revenue",
        "properties.order_id",
    ]
    assert identify["traits"] == {"email": "a@example.com"}
    assert identify["context"]["protocols"]["omitted"] == ["favourite"]
    assert query(data_dir, "SELECT event, reason_code FROM blocked_messages") == [
        ("Unplanned Thing", "unplanned_event")
    ]
