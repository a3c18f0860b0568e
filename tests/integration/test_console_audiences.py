"""The console's audience and computed-trait pages on a real cdpd, reading a real Engage store
(`engage.sqlite3`, written by Engage's own EngageStore): size, entries and exits per day, the
newest changes; only the audiences a workspace lists."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cdpd.app import running
from cdpd.config import Config, engage_path
from cdpd.engage import catalog
from cdpd.engage.catalog import Source
from cdpd.engage.inputs import ProfileMessage
from cdpd.engage.store import EngageStore
from cdpd.model.timestamps import format_ms, now_ms
from cdpd.settings import ConfigError
from tests.console_support import add_person, signed_in, workspaces_toml
from tests.sink import Sink

MakeConfig = Callable[..., Config]
BUYERS = "event('Order Completed').count() >= 1"
ORDERS = "event('Order Completed').count()"
ENGAGE = (
    f'[[audiences]]\nkey = "buyers"\nquery = "{BUYERS}"\n'
    f'[[computed_traits]]\nkey = "orders"\nquery = "{ORDERS}"\n'
    f'[[audiences]]\nkey = "globex_vips"\nquery = "{BUYERS}"\n'
)


def with_audiences(sink_url: str) -> str:
    text = workspaces_toml(sink_url)
    text = text.replace(
        'destinations = ["hook_a"]\n',
        'destinations = ["hook_a"]\naudiences = ["buyers", "orders"]\n',
    )
    return text.replace(
        'destinations = ["hook_b"]\n', 'destinations = ["hook_b"]\naudiences = ["globex_vips"]\n'
    )


async def fill_engage(path: Path, users: tuple[str, ...] = ("1", "2", "2")) -> None:
    sources = [
        Source(key="buyers", kind="audience", query=BUYERS),
        Source(key="orders", kind="computed_trait", query=ORDERS),
        Source(key="globex_vips", kind="audience", query=BUYERS),
    ]
    now = now_ms()
    store = await EngageStore.open(path)
    try:
        await store.register(sources, now)
        store.use(catalog.build(sources))
        order = {"type": "track", "event": "Order Completed", "timestamp": format_ms(now)}
        await store.process(
            [ProfileMessage(f"use_{u}", {**order, "userId": f"u{u}"}) for u in users],
            now,
        )
    finally:
        await store.close()


async def test_audience_pages_show_size_changes_and_only_the_workspace_s_own(
    make_config: MakeConfig,
) -> None:
    async with Sink() as sink:
        config = make_config(ENGAGE + with_audiences(sink.url))
        await add_person(config, "rob", {"acme": "read-only"})
        async with running(config) as server, signed_in(server.url, "rob") as (client, _):
            async with client.get("/console/w/acme/audiences") as resp:
                text = await resp.text()
            assert "Engage has not computed anything yet" in text
            await fill_engage(engage_path(config))
            async with client.get("/console/w/acme/audiences") as resp:
                assert resp.status == 200
                text = await resp.text()
            assert 'data-size="buyers">2<' in text
            assert 'data-size="orders">2<' in text
            assert "globex_vips" not in text
            async with client.get("/console/w/acme/audiences/buyers") as resp:
                assert resp.status == 200
                text = await resp.text()
            assert "<strong data-size>2</strong> members" in text
            today = format_ms(now_ms())[:10]
            assert f'<tr><td>{today}</td><td class="num">2</td><td class="num">0</td>' in text
            assert "<code>use_1</code></td><td>entered</td>" in text
            # Counted since the last view: a new member is added to today's entries.
            await fill_engage(engage_path(config), ("3",))
            async with client.get("/console/w/acme/audiences/buyers") as resp:
                text = await resp.text()
            assert "<strong data-size>3</strong> members" in text
            assert f'<tr><td>{today}</td><td class="num">3</td><td class="num">0</td>' in text
            async with client.get("/console/w/acme/audiences/orders") as resp:
                text = await resp.text()
            # One batch records a profile's final value: use_1's 1, use_2's 2, then use_3's 1.
            row = f'<tr><td>{today}</td><td class="num">0</td><td class="num">0</td>'
            assert row + '<td class="num">3</td>' in text
            assert "<code>use_2</code></td><td>computed</td><td><code>2</code>" in text
            for path in ("/console/w/acme/audiences/globex_vips", "/console/w/globex/audiences"):
                async with client.get(path) as resp:
                    assert resp.status == 404, path


def test_a_workspace_lists_only_audiences_that_exist(make_config: MakeConfig) -> None:

    with pytest.raises(
        ConfigError, match=r"workspaces\[0\]\.audiences: no audience is named 'nope'"
    ):
        make_config(
            ENGAGE
            + workspaces_toml("http://127.0.0.1:1").replace(
                'destinations = ["hook_a"]\n', 'destinations = ["hook_a"]\naudiences = ["nope"]\n'
            )
        )
