"""`cdpd privacy scan`: which stored messages hold red or unclassified fields, read from the
outbox in seq order (read-only)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiosqlite
import msgspec

from cdpd.privacy.inbox import SECTIONS

READ_MESSAGES = """
SELECT seq, message_id, source, type, received_at, payload FROM messages
WHERE seq > ? AND received_at >= ? ORDER BY seq LIMIT ?
"""
PAGE_ROWS = 1000

_decode = msgspec.json.Decoder().decode


class ScanHit(msgspec.Struct, frozen=True):
    seq: int
    message_id: str
    source: str
    type: str
    received_at: str
    red: list[str]
    unclassified: list[str]


def leaf_paths(body: dict[str, Any]) -> Iterator[str]:
    """The dotted path of every value under properties, traits and context that is not an
    object (objects are walked into)."""
    pending = [(section, body.get(section)) for section in SECTIONS]
    while pending:
        path, value = pending.pop()
        if type(value) is dict:
            pending.extend((f"{path}.{key}", child) for key, child in value.items())
        elif "." in path:
            yield path


def class_of(path: str, classes: dict[str, str]) -> str | None:
    """The field's class: its own, or that of its nearest classified parent."""
    while True:
        found = classes.get(path)
        if found is not None or "." not in path:
            return found
        path = path.rpartition(".")[0]


def inspect(body: dict[str, Any], classes: dict[str, str]) -> tuple[list[str], list[str]]:
    """The red and the unclassified fields of one message."""
    red, unclassified = [], []
    for path in leaf_paths(body):
        found = class_of(path, classes)
        if found is None:
            unclassified.append(path)
        elif found == "red":
            red.append(path)
    return sorted(red), sorted(unclassified)


def hit_of(
    seq: int,
    message_id: str,
    source: str,
    kind: str,
    received_at: str,
    payload: str,
    *,
    classes: dict[str, str],
) -> ScanHit | None:
    """The message's hit, or None when it holds no red or unclassified field."""
    try:
        body = _decode(payload)
    except msgspec.DecodeError:
        return None
    if type(body) is not dict:
        return None
    red, unclassified = inspect(body, classes)
    if red or unclassified:
        return ScanHit(seq, message_id, source, kind, received_at, red, unclassified)
    return None


async def scan(
    conn: aiosqlite.Connection, classes: dict[str, str], since: str | None = None
) -> AsyncIterator[ScanHit]:
    """Each message received from `since` that holds a red or an unclassified field."""
    after = 0
    while True:
        rows: list[Any] = list(
            await conn.execute_fetchall(READ_MESSAGES, (after, since or "", PAGE_ROWS))
        )
        if not rows:
            return
        for row in rows:
            hit = hit_of(*row, classes=classes)
            if hit is not None:
                yield hit
        after = rows[-1][0]
