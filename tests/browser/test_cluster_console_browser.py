"""The console of a JetStream node in a real browser: the debugger on one node shows, live, a
message the official Python client sent to another node."""

from __future__ import annotations

import asyncio
from pathlib import Path

from playwright.async_api import Browser, expect
from segment.analytics import Client

from cdpd.cluster.node import running_node
from tests.browser.test_console_browser import sign_in
from tests.console_support import add_cluster_person, console_node_config
from tests.helpers import WRITE_KEY
from tests.jetstream_cluster import JetStreamCluster
from tests.sink import Sink


async def test_the_debugger_of_one_node_shows_a_message_sent_to_the_other(
    browser: Browser, tmp_path: Path, js_cluster: JetStreamCluster
) -> None:
    async with (
        Sink() as sink,
        running_node(console_node_config(tmp_path, js_cluster, sink.url, "a"), node_name="a") as a,
        running_node(console_node_config(tmp_path, js_cluster, sink.url, "b"), node_name="b") as b,
    ):
        await add_cluster_person(a.config, "ada", {"acme": "member"})
        page = await sign_in(browser, b, "ada")  # type: ignore[arg-type]
        await page.get_by_role("link", name="website").click()
        await expect(page.locator("[data-status]")).to_have_text("live")
        client = Client(WRITE_KEY, host=a.url, upload_interval=0.01)
        try:
            await asyncio.to_thread(client.track, "u1", "Order Completed", {"order_id": "o1"})
            await asyncio.to_thread(client.flush)
            events = page.locator("[data-events] li")
            await expect(events).to_have_count(1)
        finally:
            await asyncio.to_thread(client.join)
        await expect(events.first.locator("summary")).to_contain_text("Order Completed")
        note = page.locator("[data-note]").first
        await expect(note).to_contain_text("Counts per interval are every node")
