"""Configs and reads for the JetStream backend's tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.js.api import RawStreamMsg
from nats.js.errors import KeyNotFoundError, NotFoundError
from segment.analytics import Client

from cdpd import config as cdpd_config
from cdpd.cluster.layout import Layout, row_of
from cdpd.model.rows import OutboxRow
from cdpd.model.timestamps import format_ms, now_ms
from tests.helpers import WRITE_KEY, WarehouseProbe, audience_toml, config_text, engage_toml


def outbox_row(message: dict[str, Any]) -> OutboxRow:
    """A Segment message from source `website` as ingest stores it (`receivedAt`: now unless
    the message says)."""
    return OutboxRow(
        message_id=message["messageId"],
        source="website",
        type=message.get("type", "track"),
        event=message.get("event"),
        user_id=message.get("userId"),
        anonymous_id=None,
        received_at=message.get("receivedAt", format_ms(now_ms())),
        payload=msgspec.json.encode(message).decode(),
    )


def jetstream_text(
    data_dir: Path,
    servers: list[str],
    extra: str = "",
    *,
    storage: str = "",
    jetstream: str = "",
    base: str | None = None,
) -> str:
    """A complete config on the JetStream backend (`storage` adds [storage] keys): `base`, a
    complete SQLite config, or `tests.helpers.config_text`'s."""
    base = config_text(data_dir, extra) if base is None else base
    text = base.replace("[storage]\n", f'[storage]\nbackend = "jetstream"\n{storage}', 1)
    urls = ", ".join(f'"{url}"' for url in servers)
    return text + f"[storage.jetstream]\nservers = [{urls}]\n{jetstream}"


def profiles_toml(sink_url: str, audiences: dict[str, str]) -> str:
    """[identity], Engage and a webhook destination `crm` that each audience (key: query)
    sends its Track calls to."""
    tracked = (audience_toml(key, query, send_track=True) for key, query in audiences.items())
    return engage_toml(sink_url) + "".join(tracked)


def jetstream_config(path: Path, text: str) -> cdpd_config.Config:
    path.write_text(text)
    return cdpd_config.load(path)


async def stream_messages(servers: list[str], stream: str) -> list[RawStreamMsg]:
    """Every message a stream holds, in stream order, read the way an operator would (a
    direct get per sequence; a sequence deleted from the middle is skipped)."""
    client = await nats.connect(servers)
    try:
        js = client.jetstream()
        info = await js.stream_info(stream)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            with contextlib.suppress(NotFoundError):
                found.append(await js.get_msg(stream, seq))
        return found
    finally:
        await client.close()


async def stored_rows(servers: list[str], layout: Layout | None = None) -> list[OutboxRow]:
    """Every message in the messages stream, in stream order."""
    layout = layout or Layout()
    return [
        row_of(message.headers, message.data or b"")
        for message in await stream_messages(servers, layout.stream)
    ]


async def stored_messages(
    servers: list[str], layout: Layout | None = None
) -> list[tuple[int, OutboxRow]]:
    """`stored_rows` with each message's stream sequence."""
    layout = layout or Layout()
    return [
        (message.seq, row_of(message.headers, message.data or b""))
        for message in await stream_messages(servers, layout.stream)
    ]


Call = Callable[[Client, str, int], None]


class Sender:
    """One client sending calls one by one (sync mode: each call is one request and returns
    only after its 200). A failed call moves it to the other node, as a load balancer would.
    `call(client, message_id, n)` makes the n-th call."""

    def __init__(
        self, name: str, urls: list[str], call: Callable[[Client, str, int], None]
    ) -> None:
        self.name = name
        self.urls = urls
        self.call = call
        self.acked: list[str] = []
        self.failed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        client = Client(WRITE_KEY, host=self.urls[0], sync_mode=True, timeout=5, max_retries=0)
        n = 0
        while not self.stop.is_set():
            message_id = f"{self.name}-{n}"
            n += 1
            try:
                self.call(client, message_id, n)
            except Exception:
                self.failed.append(message_id)
                self.urls.reverse()
                client.host = self.urls[0]
                continue
            self.acked.append(message_id)


async def acked_at_least(count: int, senders: list[Sender]) -> None:
    for _ in range(1200):
        if sum(len(s.acked) for s in senders) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} messages were acknowledged")


async def lease_holder(urls: list[str], key: str) -> str:
    """The holder named in lease `key`, once some node took it."""
    client = await nats.connect(urls)
    try:
        kv = await client.jetstream().key_value(Layout().leases_bucket)
        for _ in range(300):
            with contextlib.suppress(KeyNotFoundError):  # not taken yet
                entry = await kv.get(key)
                if entry.value:
                    return entry.value.decode()
            await asyncio.sleep(0.1)
        raise AssertionError(f"no node took the lease {key}")
    finally:
        await client.close()


async def aux_records(servers: list[str], table: str) -> list[dict[str, Any]]:
    """The JSON records on `cdpd.aux.<table>`."""
    layout = Layout()
    return [
        msgspec.json.decode(message.data or b"{}")
        for message in await stream_messages(servers, layout.aux_stream)
        if message.subject == layout.aux_subject(table)
    ]


async def empty_postgres_warehouse(dsn: str) -> WarehouseProbe:
    """The PostgreSQL warehouse "wh" (loaded every 0.2 s) in the database `dsn`, emptied."""
    warehouse = WarehouseProbe(
        kind="postgres",
        toml=f'[[warehouses]]\nname = "wh"\ntype = "postgres"\ndsn = "{dsn}"\ninterval_s = 0.2\n',
        dsn=dsn,
    )
    await warehouse.empty()
    return warehouse


async def loaded_ids(warehouse: WarehouseProbe, wanted: set[str]) -> list[str]:
    """The ids in the warehouse's `website.tracks`, once it holds every id in `wanted` (or
    after a minute)."""
    ids: list[str] = []
    for _ in range(600):
        try:
            ids = [row[0] for row in await warehouse.fetch('SELECT id FROM "website"."tracks"')]
        except Exception:  # the table appears with the first load
            ids = []
        if wanted <= set(ids):
            break
        await asyncio.sleep(0.1)
    return ids


def assert_one_limit(arrivals: list[float], per_s: int) -> None:
    """Requests that arrived at these wall-clock times were let go by one limit of `per_s` a
    second shared by every node (windows are whole seconds), not one per node.

    A request may arrive seconds after the window that let it go on a busy machine, so one
    second may hold more than `per_s`; but arrivals only lag their windows, so by the end of
    each second no more can have arrived than `per_s` per window since the first (counted
    from the second before the first arrival, which may have lagged too). With a limit per
    node, two nodes would pass 4 times `per_s` by the end of the second second, against 3 times."""
    per_second = Counter(int(at) for at in arrivals)
    first = min(per_second)
    arrived = 0
    for second in range(first, max(per_second) + 1):
        arrived += per_second[second]
        assert arrived <= per_s * (second - first + 2), per_second
