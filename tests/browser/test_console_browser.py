"""The console in a real browser: signing in, the debugger showing a message sent with the
official Python client, replaying a dead letter, the delivery overview matching what a real
sink received, a read-only member denied every change, another workspace invisible, and the
analytics.js snippet working with nothing but cdpd.

Set CDPD_SCREENSHOTS to a folder to keep screenshots of the main pages (README's come from
here)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from playwright.async_api import Browser, Page, expect
from segment.analytics import Client

from cdpd.app import Running, running
from cdpd.config import Config, engage_path
from cdpd.config import load as load_config
from tests.console_support import PASSWORD, add_person, workspaces_toml
from tests.helpers import WRITE_KEY, config_text, query
from tests.integration.test_console_audiences import ENGAGE, with_audiences
from tests.integration.test_console_privacy_profiles import IDENTITY
from tests.sink import Sink, status

MakeConfig = Callable[..., Config]
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}


async def sign_in(browser: Browser, server: Running, name: str, **options: object) -> Page:
    page = await browser.new_page(viewport=options.get("viewport") or WIDE)  # type: ignore[arg-type]
    await page.goto(f"{server.url}/console/")
    await expect(page).to_have_url(re.compile(r"/console/signin"))
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", level=1)).to_be_visible()
    return page


async def screenshot(page: Page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("CDPD_SCREENSHOTS") or tmp_path)
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


async def test_a_message_from_the_python_client_is_pushed_to_the_open_debugger(
    make_config: MakeConfig, browser: Browser, tmp_path: Path
) -> None:
    async with Sink() as sink:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "ada", {"acme": "owner"})
        async with running(config) as server:
            page = await sign_in(browser, server, "ada")
            await expect(page.get_by_role("heading", name="Acme")).to_be_visible()
            await screenshot(page, "console-workspace", tmp_path)
            await page.get_by_role("link", name="website").click()
            await expect(page.locator("[data-status]")).to_have_text("live")
            client = Client(WRITE_KEY, host=server.url, upload_interval=0.01)
            try:
                await asyncio.to_thread(
                    client.track, "u1", "Order Completed", {"revenue": 42, "currency": "EUR"}
                )
                await page.evaluate("window.notReloaded = true")
                await asyncio.to_thread(client.flush)
                events = page.locator("[data-events] li")
                await expect(events).to_have_count(1)
                assert await page.evaluate("window.notReloaded === true")  # pushed to the page
            finally:
                await asyncio.to_thread(client.join)
            await expect(events.first.locator("summary")).to_contain_text("Order Completed")
            await events.first.locator("summary").click()
            await expect(events.first.locator("code")).to_contain_text('analytics.track("Order')
            await page.get_by_role("button", name="Raw").click()
            await expect(events.first.locator("code")).to_contain_text('"receivedAt"')
            await page.get_by_label("Search").fill("no such text")
            await expect(events.first).to_be_hidden()
            await page.get_by_label("Search").fill("EUR")
            await expect(events.first).to_be_visible()
            await page.get_by_role("button", name="Pause").click()
            await expect(page.locator("[data-status]")).to_have_text("paused")
            await page.get_by_role("link", name="Show write key and snippet").click()
            await expect(page.locator("[data-write-key]")).to_have_text(WRITE_KEY)
            await screenshot(page, "console-source", tmp_path)


async def test_replaying_a_dead_letter_and_the_overview_matching_the_sink(
    make_config: MakeConfig, browser: Browser, tmp_path: Path
) -> None:
    async with Sink(status(200)) as sink:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "ada", {"acme": "member"})
        sink.script.append(status(400, body='{"error": "bad"}'))  # the first is refused: dead
        async with running(config) as server:
            client = Client(WRITE_KEY, host=server.url, upload_interval=0.01)
            try:
                await asyncio.to_thread(client.track, "u1", "First")
                await asyncio.to_thread(client.flush)
                await _until(lambda: len(sink.received) == 1)
                for index in range(4):
                    await asyncio.to_thread(client.track, "u1", f"Later {index}")
                await asyncio.to_thread(client.flush)
            finally:
                await asyncio.to_thread(client.join)
            await _until(lambda: len(sink.received) == 5)
            page = await sign_in(browser, server, "ada")
            await page.goto(f"{server.url}/console/w/acme/destinations/hook_a?window=10m")
            delivered = page.locator('[data-count="delivered"]')
            await _reload_until(page, delivered, "4")
            await expect(page.locator("[data-dead-total]")).to_have_text("1")
            await expect(page.locator('[data-count="failed"]')).to_have_text("1")
            await expect(page.get_by_role("cell", name="400", exact=True).first).to_be_visible()
            await page.get_by_role("link", name="You sent, request, response").click()
            await expect(page.get_by_role("heading", name="Request to destination")).to_be_visible()
            await expect(page.locator("pre").nth(1)).to_contain_text("POST http")
            await page.go_back()
            await page.get_by_role("button", name="Replay dead letters").click()
            await expect(page.get_by_role("status")).to_contain_text("1 dead letters queued again")
            await _until(lambda: len(sink.received) == 6)
            assert sink.received[-1].messages[0]["event"] == "First"
            # no reload: the overview refreshes itself every 10 s, chart included
            await expect(delivered).to_have_text("5")
            await expect(page.locator("#overview canvas")).to_have_count(1)
            await page.reload()
            await expect(page.locator("[data-dead-total]")).to_have_text("0")
            answered = sum(1 for r in sink.received if r.status == 200)
            assert await delivered.inner_text() == str(answered)
            await screenshot(page, "console-destination", tmp_path)


async def test_a_read_only_member_is_denied_every_change_and_sees_no_other_workspace(
    make_config: MakeConfig, browser: Browser, tmp_path: Path
) -> None:
    async with Sink() as sink:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "rob", {"acme": "read-only"})
        async with running(config) as server:
            page = await sign_in(browser, server, "rob", viewport=NARROW)
            await expect(page.get_by_text("Your role: read-only")).to_be_visible()
            assert "backend" not in await page.content()
            await page.goto(f"{server.url}/console/w/acme/destinations/hook_a")
            assert await page.get_by_role("button", name="Replay dead letters").count() == 0
            assert (
                await page.get_by_role("button", name="Retry waiting deliveries now").count() == 0
            )
            await screenshot(page, "console-destination-narrow", tmp_path)
            csrf = await page.locator("main").get_attribute("data-csrf")
            for path in (
                "/console/w/acme/destinations/hook_a/replay",
                "/console/w/acme/destinations/hook_a/retry",
                "/console/w/acme/catalog/webhook",
            ):
                answer = await page.evaluate(
                    """async ([path, csrf]) => (await fetch(path, {method: "POST",
                        headers: {"X-CSRF-Token": csrf}, body: new URLSearchParams({name: "x"})
                    })).status""",
                    [path, csrf],
                )
                assert answer == 403, path
            await page.goto(f"{server.url}/console/w/acme/sources/website")
            await expect(page.get_by_text("The write key is hidden")).to_be_visible()
            response = await page.goto(f"{server.url}/console/w/globex/")
            assert response is not None
            assert response.status == 404
            response = await page.goto(f"{server.url}/console/w/acme/destinations/hook_b")
            assert response is not None
            assert response.status == 404


async def test_the_catalog_form_checks_a_webhook_as_check_config_does(
    make_config: MakeConfig, browser: Browser, tmp_path: Path
) -> None:
    async with Sink() as sink:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "ada", {"acme": "owner"})
        async with running(config) as server:
            page = await sign_in(browser, server, "ada")
            await page.goto(f"{server.url}/console/w/acme/catalog")
            await screenshot(page, "console-catalog", tmp_path)
            await page.get_by_role("link", name="Webhook", exact=False).first.click()
            await page.get_by_label("name (required)").fill("hook_a")
            await page.locator("#f-url").fill(f"{sink.url}/new")
            await page.get_by_role("button", name="Check").click()
            await expect(page.get_by_role("alert")).to_contain_text("exists already")
            await page.get_by_label("name (required)").fill("new_hook")
            await page.locator("#f-url").fill(f"{sink.url}/new")
            await page.locator("#f-secret").fill("s3cret-value")
            await page.get_by_role("button", name="Check").click()
            fragment = page.locator("[data-fragment]")
            await expect(fragment).to_contain_text('name = "new_hook"')
            await expect(fragment).to_contain_text('type = "webhook"')


async def test_a_webhook_added_from_the_catalog_delivers_without_a_restart(
    browser: Browser, tmp_path: Path, data_dir: Path
) -> None:
    async with Sink() as sink, Sink() as added:
        path = tmp_path / "cdpd.toml"
        (tmp_path / "conf.d").mkdir()
        path.write_text('include = "conf.d"\n' + config_text(data_dir, workspaces_toml(sink.url)))
        config = load_config(path)
        await add_person(config, "ada", {"acme": "owner"})
        await add_person(config, "rob", {"acme": "read-only"})
        async with running(config, config_path=path) as server:
            page = await sign_in(browser, server, "ada")
            await page.goto(f"{server.url}/console/w/acme/catalog")
            await page.get_by_role("link", name="Webhook", exact=False).first.click()
            await page.get_by_label("name (required)").fill("shop_hook")
            await page.locator("#f-url").fill(added.url)
            await page.get_by_role("button", name="Add").click()
            await expect(page.get_by_role("status")).to_contain_text("shop_hook is added")
            await expect(page.get_by_role("heading", level=1)).to_contain_text("shop_hook")
            client = Client(WRITE_KEY, host=server.url, upload_interval=0.01)
            try:
                await asyncio.to_thread(client.track, "u1", "Order Completed", {"revenue": 7})
                await asyncio.to_thread(client.flush)
            finally:
                await asyncio.to_thread(client.join)
            await added.wait_for_delivered(1)
            assert added.messages[0]["event"] == "Order Completed"
            await page.goto(f"{server.url}/console/w/acme/destinations/shop_hook?window=10m")
            await _reload_until(page, page.locator('[data-count="delivered"]'), "1")
            assert await page.locator('[data-count="received"]').inner_text() == "1"
            await screenshot(page, "console-destination-added", tmp_path)
            await page.get_by_role("button", name="Disable shop_hook").click()
            await expect(page.get_by_role("status")).to_contain_text("shop_hook is disabled")
            await expect(page.get_by_role("button", name="Enable shop_hook")).to_be_visible()
            assert "shop_hook" not in server.delivery.lanes

            reader = await sign_in(browser, server, "rob")
            await reader.goto(f"{server.url}/console/w/acme/destinations/shop_hook")
            assert await reader.get_by_role("button", name="Enable shop_hook").count() == 0
            csrf = await reader.locator("main").get_attribute("data-csrf")
            for where, fields in (
                ("destinations/shop_hook/enabled", {"enabled": "true"}),
                ("catalog/webhook", {"name": "rob_hook", "url": added.url, "action": "add"}),
            ):
                answer = await reader.evaluate(
                    """async ([path, csrf, fields]) => (await fetch(path, {method: "POST",
                        headers: {"X-CSRF-Token": csrf}, body: new URLSearchParams(fields)
                    })).status""",
                    [f"/console/w/acme/{where}", csrf, fields],
                )
                assert answer == 403, where
            assert sorted(p.name for p in (tmp_path / "conf.d").iterdir()) == [
                "destination-shop_hook.toml"
            ]
        assert len(added.messages) == 1


async def test_an_owner_adds_a_source_and_its_messages_appear_in_its_debugger(
    browser: Browser, tmp_path: Path, data_dir: Path
) -> None:
    async with Sink() as sink:
        path = tmp_path / "cdpd.toml"
        (tmp_path / "conf.d").mkdir()
        path.write_text('include = "conf.d"\n' + config_text(data_dir, workspaces_toml(sink.url)))
        config = load_config(path)
        await add_person(config, "ada", {"acme": "owner"})
        async with running(config, config_path=path) as server:
            page = await sign_in(browser, server, "ada")
            await page.get_by_role("link", name="Add a source").click()
            await page.get_by_label("name (required)").fill("shop_server")
            await page.get_by_label("Server (Python").check()
            await screenshot(page, "console-source-add", tmp_path)
            await page.get_by_role("button", name="Add source").click()
            await expect(page.get_by_role("status")).to_contain_text("shop_server is added")
            await expect(page.get_by_role("heading", level=1)).to_contain_text("shop_server")
            await expect(page.locator("[data-status]")).to_have_text("live")
            await page.get_by_role("link", name="Show write key and snippet").click()
            key = await page.locator("[data-write-key]").inner_text()
            assert re.fullmatch(r"[A-Za-z0-9]{32}", key)
            await expect(page.locator("[data-setup]")).to_contain_text("analytics.host")
            client = Client(key, host=server.url, upload_interval=0.01)
            try:
                await asyncio.to_thread(client.track, "u1", "Server Order", {"total": 12})
                await asyncio.to_thread(client.flush)
            finally:
                await asyncio.to_thread(client.join)
            events = page.locator("[data-events] li")
            await expect(events).to_have_count(1)
            await expect(events.first.locator("summary")).to_contain_text("Server Order")
            await screenshot(page, "console-source-added", tmp_path)
            (row,) = query(data_dir, "SELECT source, event FROM messages WHERE source != 'website'")
            assert row == ("shop_server", "Server Order")
            await page.get_by_label("Ingest refuses its write key from now on").check()
            await page.get_by_role("button", name="Remove shop_server").click()
            await expect(page.get_by_role("status")).to_contain_text("shop_server is removed")
            assert "shop_server" not in {s.name for s in server.consumers.config.sources}
            assert list((tmp_path / "conf.d").iterdir()) == []


async def test_privacy_profiles_and_audiences_pages(
    make_config: MakeConfig, browser: Browser, tmp_path: Path, data_dir: Path
) -> None:
    async with Sink() as sink:
        config = make_config(IDENTITY + ENGAGE + with_audiences(sink.url))
        await add_person(config, "mel", {"acme": "member"})
        async with running(config) as server:
            client = Client(WRITE_KEY, host=server.url, upload_interval=0.01)
            try:
                await asyncio.to_thread(client.page, anonymous_id="anon-1", name="Pricing")
                await asyncio.to_thread(
                    client.identify, "user-1", {"email": "ada@example.com"}, anonymous_id="anon-1"
                )
                await asyncio.to_thread(client.track, "user-1", "Order Completed", {"total": 9})
                await asyncio.to_thread(client.flush)
            finally:
                await asyncio.to_thread(client.join)
            assert server.identity is not None
            await _until(
                lambda: bool(
                    query(data_dir, "SELECT 1 FROM privacy_inbox WHERE field = 'traits.email'")
                )
            )
            async with asyncio.timeout(30):
                await server.identity.wait_resolved(server.writer.last_seq)
            # The daemon's Engage stage makes user-1 (one Order Completed) a buyer.
            await _until(lambda: _buyers(engage_path(config)) == 1)
            page = await sign_in(browser, server, "mel")
            await page.get_by_role("link", name="Privacy: inbox and inventory").click()
            await expect(page.locator("[data-inbox]")).to_contain_text("traits.email")
            await page.get_by_role("button", name="Red: traits.email").click()
            await expect(page.get_by_role("status")).to_contain_text("traits.email is red")
            await expect(page.locator("[data-inventory]")).to_contain_text("traits.email")
            await screenshot(page, "console-privacy", tmp_path)
            await page.goto(f"{server.url}/console/w/acme/")
            await page.get_by_role("link", name="Profile explorer").click()
            await page.get_by_label("Identifier (TYPE:VALUE)").fill("email:ada@example.com")
            await page.get_by_role("button", name="Look up").click()
            await expect(page.locator("[data-identifiers]")).to_contain_text("anon-1")
            await expect(page.locator("[data-events] li")).to_have_count(3)
            await screenshot(page, "console-profile", tmp_path)
            await page.goto(f"{server.url}/console/w/acme/audiences")
            await page.get_by_role("link", name="buyers").click()
            await expect(page.locator("[data-size]")).to_have_text("1")
            await expect(page.locator(".chart canvas")).to_have_count(1)
            await screenshot(page, "console-audience", tmp_path)


async def test_the_snippet_works_with_nothing_but_cdpd(
    make_config: MakeConfig, browser: Browser, tmp_path: Path, data_dir: Path
) -> None:
    async with Sink() as sink:
        config = make_config(workspaces_toml(sink.url))
        await add_person(config, "ada", {"acme": "owner"})
        async with running(config) as server:
            page = await sign_in(browser, server, "ada")
            await page.goto(f"{server.url}/console/w/acme/sources/website/write-key")
            snippet = await page.locator("pre.snippet code").inner_text()
            site = web.Application()

            async def index(_: web.Request) -> web.Response:
                html = f"<!doctype html><html><head>{snippet}</head><body>shop</body></html>"
                return web.Response(text=html, content_type="text/html")

            site.router.add_get("/", index)
            runner = web.AppRunner(site, access_log=None)
            await runner.setup()
            shop = web.TCPSite(runner, "127.0.0.1", 0)
            await shop.start()
            port = runner.addresses[0][1]
            visitor = await browser.new_page()
            outside: list[str] = []
            visitor.on(
                "request",
                lambda r: (
                    outside.append(r.url)
                    if not r.url.startswith(("http://127.0.0.1", "data:"))
                    else None
                ),
            )
            try:
                await visitor.goto(f"http://127.0.0.1:{port}/")
                await _until(
                    lambda: bool(query(data_dir, "SELECT 1 FROM messages WHERE type = 'page'")),
                    timeout_s=10,
                )
            finally:
                await runner.cleanup()
            assert outside == []  # the bundle, its settings and the events: all from cdpd
            (context,) = query(
                data_dir, "SELECT payload ->> '$.context.library.name' FROM messages"
            )
            assert context == ("analytics.js",)


def _buyers(path: Path) -> int:
    """Members of the `buyers` audience in Engage's store (0 before Engage has written it)."""
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        try:
            row = conn.execute("SELECT count(*) FROM engage_values WHERE key = 'buyers'").fetchone()
        except sqlite3.OperationalError:  # the tables are not there yet
            return 0
    return int(row[0])


async def _until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    """Poll what another process or server changes (no event to wait on from here)."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def _reload_until(page: Page, locator: object, text: str) -> None:
    async with asyncio.timeout(30):
        while await locator.inner_text() != text:  # type: ignore[attr-defined]
            await asyncio.sleep(0.3)
            await page.reload()
