"""Deleting users from the JetStream backend's streams: a regulation's `outbox` target.

The messages stream and the dead-letter stream are read with their headers only (the user id
travels as `Cdpd-User-Id`, so no payload crosses the network); the aux stream in full (a
reject's or blocked message's user is in its payload). Violations hold no user id: those of
the messages found go too, by message id. Everything is found before anything is deleted, and
the messages stream is deleted from last: a holder that stops half-way leaves the messages in
place, so the next attempt finds them and their violations again (deleting is idempotent; a
sequence already gone is skipped).

Each message goes by its stream sequence (`STREAM.MSG.DELETE`, which overwrites the stored
bytes). The cost is a scan: of the messages stream, only the partitions of the users (a user's
messages all share its partition's subject), of the dead-letter and aux streams, all of them;
O(messages kept there) however few are the users', plus one request per message deleted; see
docs/scaling.md for the measured rate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from urllib.parse import unquote

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from cdpd.cluster.browse import reading
from cdpd.cluster.layout import MESSAGE_ID, SOURCE, USER_ID, Layout
from cdpd.privacy.suppression import user_id_of

SCAN_BATCH = 5000
DELETES_AT_ONCE = 64  # requests in flight at once
FETCH_TIMEOUT_S = 5.0


class _AuxRecord(msgspec.Struct):
    """What the aux stream's records (rejects, blocked messages, violations) tell of a user."""

    source: str | None = None
    message_id: str | None = None
    payload: str | None = None


_aux_decoder = msgspec.json.Decoder(_AuxRecord)


class Found(msgspec.Struct):
    """Stream sequences to delete, by stream, and the message ids they held."""

    seqs: dict[str, list[int]]
    message_ids: set[str]


async def erase_users(
    js: JetStreamContext,
    layout: Layout,
    user_ids: Collection[str],
    source: str | None,
    found_ids: Callable[[set[str]], Awaitable[None]] | None = None,
) -> int:
    """Delete the users' messages, dead letters, rejects, blocked messages and violations;
    returns how many stream messages went. `found_ids` is given their message ids before
    anything is deleted (what a source's regulation erases from the nodes' files)."""
    found = await find_users(js, layout, frozenset(user_ids), source)
    if found_ids is not None:
        await found_ids(found.message_ids)
    removed = 0
    for stream in (layout.aux_stream, layout.dead_stream, layout.stream):
        seqs = found.seqs.get(stream, [])
        for start in range(0, len(seqs), DELETES_AT_ONCE):
            chunk = seqs[start : start + DELETES_AT_ONCE]
            removed += sum(await asyncio.gather(*(_delete(js, stream, seq) for seq in chunk)))
    return removed


async def find_users(
    js: JetStreamContext, layout: Layout, users: frozenset[str], source: str | None
) -> Found:
    found = Found(seqs={}, message_ids=set())
    places = [(layout.stream, subject) for subject in partition_subjects(layout, users)]
    for stream, subjects in [*places, (layout.dead_stream, layout.dead_subjects)]:
        async for msg in scan(js, stream, subjects, headers_only=True):
            headers = msg.headers or {}
            user_id = headers.get(USER_ID)
            if user_id is not None and _holds(unquote(user_id), headers.get(SOURCE), users, source):
                found.seqs.setdefault(stream, []).append(msg.metadata.sequence.stream)
                found.message_ids.add(unquote(headers.get(MESSAGE_ID, "")))
    await _find_aux(js, layout, users, source, found)
    for seqs in found.seqs.values():
        seqs.sort()
    return found


def partition_subjects(layout: Layout, users: Collection[str]) -> list[str]:
    """A user's messages are all on its partition's subject: only those are read (all of
    them, with one consumer, once the users span every partition)."""
    partitions = sorted({layout.partition_of(user) for user in users})
    if len(partitions) == layout.partitions:
        return [layout.messages_subjects]
    return [layout.message_subject(partition) for partition in partitions]


async def _find_aux(
    js: JetStreamContext, layout: Layout, users: frozenset[str], source: str | None, found: Found
) -> None:
    violations: list[tuple[int, _AuxRecord]] = []
    violations_subject = layout.aux_subject("violations")
    seqs = found.seqs.setdefault(layout.aux_stream, [])
    async for msg in scan(js, layout.aux_stream, layout.aux_subjects, headers_only=False):
        try:
            record = _aux_decoder.decode(msg.data)
        except msgspec.DecodeError:
            continue
        seq = msg.metadata.sequence.stream
        if msg.subject == violations_subject:
            violations.append((seq, record))
        elif record.payload is not None and _holds(
            user_id_of(record.payload), record.source, users, source
        ):
            seqs.append(seq)
            if record.message_id is not None:
                found.message_ids.add(record.message_id)
    seqs += [
        seq
        for seq, record in violations
        if record.message_id in found.message_ids and (source is None or record.source == source)
    ]


def _holds(
    user_id: str | None, message_source: str | None, users: frozenset[str], source: str | None
) -> bool:
    if user_id is None or (source is not None and message_source != source):
        return False
    return user_id in users


async def scan(
    js: JetStreamContext, stream: str, subjects: str, *, headers_only: bool
) -> AsyncIterator[Msg]:
    """Every message of `stream` now, in order (an ephemeral consumer that acknowledges
    nothing); the stream's end is where the scan stopped finding more."""
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return
    config = reading(DeliverPolicy.ALL, headers_only=headers_only, inactive_s=60.0)
    subscription = await js.pull_subscribe(subjects, stream=stream, config=config)
    try:
        while True:
            try:
                batch = await subscription.fetch(SCAN_BATCH, timeout=FETCH_TIMEOUT_S)
            except TimeoutError:
                return
            for msg in batch:
                yield msg
            if batch[-1].metadata.num_pending == 0:
                return
    finally:
        await subscription.unsubscribe()


async def _delete(js: JetStreamContext, stream: str, seq: int) -> int:
    try:
        return 1 if await js.delete_msg(stream, seq) else 0
    except NotFoundError:  # gone already (an earlier attempt, or the stream's max age)
        return 0
