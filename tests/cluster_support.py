"""Configs and reads for the JetStream backend's tests."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from cdpd import config as cdpd_config
from cdpd.cluster.layout import Layout, row_of
from cdpd.model.rows import OutboxRow
from cdpd.model.timestamps import format_ms, now_ms
from tests.helpers import WarehouseProbe, config_text


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
