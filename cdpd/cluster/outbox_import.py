"""`cdpd outbox import`: a SQLite outbox's export (`cdpd.outbox.export`) published into the
JetStream backend, so that every destination and warehouse gets what it was still owed on the
SQLite side, and nothing it already had (docs/scaling.md, "Moving from SQLite to JetStream").

Messages go through the ingest's publishing path (`JetStreamAppender`), with its
`Nats-Msg-Id` and dedup markers, each carrying two more headers:

* `Cdpd-Owed-To`: the destinations the SQLite outbox still owed it; the others' lanes skip it
  (`Router.takes`). A destination the SQLite outbox did not know starts at the end, as it would
  have there.
* `Cdpd-Loaded-In`: the warehouses that had loaded it; their loads skip it. On the first run
  each of the export's warehouses has its position set to the stream's start, so a load reads
  every imported message and takes the ones not yet loaded.

The progress (the last seq of the export whose publish was acknowledged) is kept in the
`CDPD_positions` bucket under `import.<hash of the outbox's path>`: a run that stopped half way
is run again and continues after it; the batch in flight when it stopped is dropped as
duplicate by the dedup id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import IO

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from cdpd.clock import SystemClock
from cdpd.cluster.delivery import delivery_store
from cdpd.cluster.ingest import JetStreamAppender
from cdpd.cluster.layout import LOADED_IN, OWED_TO, Layout, names_header
from cdpd.cluster.node import open_cluster
from cdpd.config import Config
from cdpd.model.rows import OutboxRow
from cdpd.outbox.export import FORMAT, VERSION, ExportedMessage, ExportHeader
from cdpd.outbox.writer import OutboxUnavailable
from cdpd.warehouse.loader import SYNC_ERRORS
from cdpd.warehouse.sinks import open_sink

BATCH_MESSAGES = 500
ACK_TIMEOUT_S = 30.0  # per batch: an import has no client waiting, only a quorum to reach


class ImportRefused(Exception):
    """The input or the cluster is not fit for this import; nothing was published."""


class ImportStopped(Exception):
    """The cluster stopped acknowledging part way; running the import again continues."""


class ImportProgress(msgspec.Struct, kw_only=True):
    """The `import.<hash>` key of the positions bucket."""

    outbox: str
    last_seq: int = 0  # every message of the export up to this seq is acknowledged
    warehouses: list[str] = []  # whose position the first run set to the stream's start


class ImportCounts(msgspec.Struct, kw_only=True):
    read: int = 0  # messages in the export
    stored: int = 0
    duplicates: int = 0  # already in the stream (dedup id)
    skipped: int = 0  # imported by an earlier run
    last_seq: int = 0
    warehouses: list[str] = []  # positions set to the stream's start by this run
    not_configured: list[str] = []  # destinations and warehouses of the export unknown here


_header = msgspec.json.Decoder(ExportHeader)
_message = msgspec.json.Decoder(ExportedMessage)
_progress = msgspec.json.Decoder(ImportProgress)


def progress_key(outbox: str) -> str:
    return "import." + hashlib.blake2b(outbox.encode(), digest_size=8).hexdigest()


def read_header(line: bytes) -> ExportHeader:
    try:
        header = _header.decode(line)
    except msgspec.DecodeError as exc:
        raise ImportRefused(f"line 1: not a cdpd outbox export ({exc})") from None
    if header.format != FORMAT:
        raise ImportRefused(f"line 1: not a cdpd outbox export (format {header.format!r})")
    if header.version != VERSION:
        raise ImportRefused(
            f"line 1: export format version {header.version}; this cdpd reads version {VERSION}"
        )
    return header


def messages(lines: Iterator[bytes]) -> Iterator[ExportedMessage]:
    """The messages after the header, checked to come in seq order."""
    last_seq = 0
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        try:
            message = _message.decode(line)
        except msgspec.DecodeError as exc:
            raise ImportRefused(f"line {number}: {exc}") from None
        if message.seq <= last_seq:
            raise ImportRefused(f"line {number}: seq {message.seq} does not follow {last_seq}")
        last_seq = message.seq
        yield message


def row_of(message: ExportedMessage) -> OutboxRow:
    return OutboxRow(
        message.message_id,
        message.source,
        message.type,
        message.event,
        message.user_id,
        message.anonymous_id,
        message.received_at,
        message.payload,
    )


async def import_export(config: Config, source: IO[bytes]) -> ImportCounts:
    """Publish the export read from `source` into the cluster of `config`."""
    lines = iter(source)
    header = read_header(next(lines, b""))
    layout = Layout.of(config.storage.jetstream)
    counts = ImportCounts(not_configured=_not_configured(config, header))
    async with open_cluster(config, layout, "cdpd outbox import") as (client, js, publisher):
        kv = await js.key_value(layout.positions_bucket)
        key = progress_key(header.outbox)
        progress = await _progress_of(kv, key)
        if progress is None:
            progress = await _first_run(config, js, layout, header)
            await _delivery_consumers(config, js, layout)
            counts.warehouses = progress.warehouses
            await kv.put(key, msgspec.json.encode(progress))
        appender = JetStreamAppender.of(
            config, client, publisher, layout, ack_timeout_s=ACK_TIMEOUT_S
        )
        for batch in _batches(messages(lines), counts, after_seq=progress.last_seq):
            await _publish(appender, batch, header.warehouses, counts)
            progress.last_seq = counts.last_seq = batch[-1].seq
            await kv.put(key, msgspec.json.encode(progress))
    return counts


def _not_configured(config: Config, header: ExportHeader) -> list[str]:
    destinations = {d.name for d in config.destinations}
    warehouses = {w.name for w in config.warehouses}
    return [f"destination {n}" for n in header.destinations if n not in destinations] + [
        f"warehouse {n}" for n in header.warehouses if n not in warehouses
    ]


async def _progress_of(kv: KeyValue, key: str) -> ImportProgress | None:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    return _progress.decode(entry.value or b"{}")


async def _first_run(
    config: Config, js: JetStreamContext, layout: Layout, header: ExportHeader
) -> ImportProgress:
    """Set the positions of the export's warehouses to the stream's start, which must be
    empty then: a position already past messages of the cluster cannot be told apart from one
    of the SQLite outbox."""
    warehouses = [w for w in config.warehouses if w.name in header.warehouses]
    last_seq = (await js.stream_info(layout.stream)).state.last_seq
    if warehouses and last_seq:
        raise ImportRefused(
            f"the stream {layout.stream} already holds messages (last seq {last_seq}) and"
            f" warehouse {warehouses[0].name}'s position cannot be set to its start: import"
            " before any node takes traffic (docs/scaling.md)"
        )
    for warehouse in warehouses:
        try:
            async with open_sink(config, warehouse) as sink, sink.load() as load:
                await load.set_position(0)
        except SYNC_ERRORS as exc:
            raise ImportStopped(
                f"warehouse {warehouse.name}: its position cannot be set: {exc}"
            ) from exc
    return ImportProgress(outbox=header.outbox, warehouses=[w.name for w in warehouses])


async def _delivery_consumers(config: Config, js: JetStreamContext, layout: Layout) -> None:
    """Every enabled destination's consumers, created before the first message is published so
    that they start before it (a consumer created later starts after what the stream holds)."""
    store = delivery_store(config, js, SystemClock())
    for destination in config.destinations:
        if destination.enabled:
            await store.ensure_consumers(destination)


def _batches(
    found: Iterable[ExportedMessage], counts: ImportCounts, *, after_seq: int
) -> Iterator[list[ExportedMessage]]:
    batch: list[ExportedMessage] = []
    for message in found:
        counts.read += 1
        if message.seq <= after_seq:
            counts.skipped += 1
            continue
        batch.append(message)
        if len(batch) == BATCH_MESSAGES:
            yield batch
            batch = []
    if batch:
        yield batch


async def _publish(
    appender: JetStreamAppender,
    batch: list[ExportedMessage],
    warehouses: dict[str, int],
    counts: ImportCounts,
) -> None:
    rows = [row_of(message) for message in batch]
    headers = {
        id(row): _headers(message, warehouses) for row, message in zip(rows, batch, strict=True)
    }
    try:
        result = await appender.append(rows, (), 0, more_headers=lambda row: headers[id(row)])
    except OutboxUnavailable as exc:
        raise ImportStopped(
            f"{exc.message} (imported up to seq {counts.last_seq}; run the import again to"
            " continue)"
        ) from None
    counts.stored += result.stored
    counts.duplicates += result.duplicates


def _headers(message: ExportedMessage, warehouses: dict[str, int]) -> dict[str, str]:
    headers = {OWED_TO: names_header(message.owed_destinations)}
    loaded_in = [name for name in warehouses if name not in message.owed_warehouses]
    if loaded_in:
        headers[LOADED_IN] = names_header(loaded_in)
    return headers
