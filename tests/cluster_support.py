"""Configs and reads for the JetStream backend's tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import nats

from cdpd import config as cdpd_config
from cdpd.cluster.layout import Layout, row_of
from cdpd.model.rows import OutboxRow
from cdpd.model.timestamps import format_ms, now_ms
from tests.helpers import config_text


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
    data_dir: Path, servers: list[str], extra: str = "", *, storage: str = "", jetstream: str = ""
) -> str:
    """A complete config on the JetStream backend (`storage` adds [storage] keys)."""
    text = config_text(data_dir, extra).replace(
        "[storage]\n", f'[storage]\nbackend = "jetstream"\n{storage}', 1
    )
    urls = ", ".join(f'"{url}"' for url in servers)
    return text + f"[storage.jetstream]\nservers = [{urls}]\n{jetstream}"


def jetstream_config(path: Path, text: str) -> cdpd_config.Config:
    path.write_text(text)
    return cdpd_config.load(path)


async def stored_rows(servers: list[str], layout: Layout | None = None) -> list[OutboxRow]:
    """Every message in the messages stream, in stream order, read the way an operator would
    (a direct get per sequence)."""
    layout = layout or Layout()
    client = await nats.connect(servers)
    try:
        js = client.jetstream()
        info = await js.stream_info(layout.stream)
        rows = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            message = await js.get_msg(layout.stream, seq)
            rows.append(row_of(message.headers, message.data or b""))
        return rows
    finally:
        await client.close()


async def aux_records(servers: list[str], table: str) -> list[dict[str, Any]]:
    """The JSON records on `cdpd.aux.<table>`."""
    layout = Layout()
    client = await nats.connect(servers)
    try:
        js = client.jetstream()
        info = await js.stream_info(layout.aux_stream)
        records = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            message = await js.get_msg(layout.aux_stream, seq)
            if message.subject == layout.aux_subject(table):
                records.append(msgspec.json.decode(message.data or b"{}"))
        return records
    finally:
        await client.close()
