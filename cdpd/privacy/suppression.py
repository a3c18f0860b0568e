"""Suppression at ingestion: the first step of every source's chain, before anything about a
message is observed or written.

The suppressed user ids are kept per source as one frozen set (the workspace's plus the
source's own), rebuilt whenever a regulation changes them, so the check costs one set look-up
per message. A suppressed user's messages are answered 200 like any other, counted, and never
reach the outbox: not `messages` (nor its duplicate check), `rejects`, violations, blocked
messages or the source schema.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from cdpd.ingest.normalize import Rejection
from cdpd.model.rows import OutboxRow
from cdpd.privacy.regulations import WORKSPACE

_NONE: frozenset[str] = frozenset()


class _Head(msgspec.Struct, frozen=True):
    userId: str | int | None = None


_head_decoder = msgspec.json.Decoder(_Head)


class Suppressions:
    """The suppressions in force, and how many messages each source had suppressed."""

    def __init__(self) -> None:
        self._workspace: frozenset[str] = _NONE
        self._by_source: dict[str, frozenset[str]] = {}
        self.suppressed: dict[str, int] = {}

    def replace(self, entries: Iterable[tuple[str, str]]) -> None:
        """Put the given (user id, source) suppressions in force, and only those."""
        workspace: set[str] = set()
        by_source: dict[str, set[str]] = {}
        for user_id, source in entries:
            if source == WORKSPACE:
                workspace.add(user_id)
            else:
                by_source.setdefault(source, set()).add(user_id)
        self._workspace = frozenset(workspace)
        self._by_source = {name: frozenset(users | workspace) for name, users in by_source.items()}

    def of(self, source: str) -> frozenset[str]:
        return self._by_source.get(source, self._workspace)

    def __len__(self) -> int:
        return len(self._workspace) + sum(len(users) for users in self._by_source.values())

    def admit(self, source: str, rows: Sequence[OutboxRow]) -> Sequence[OutboxRow]:
        """The rows whose user is not suppressed for `source`; the others are counted."""
        suppressed = self.of(source)
        if not suppressed:
            return rows
        kept = [row for row in rows if row.user_id not in suppressed]
        if len(kept) != len(rows):
            self.suppressed[source] = self.suppressed.get(source, 0) + len(rows) - len(kept)
        return kept

    def admit_rejections(self, source: str, rejections: Sequence[Rejection]) -> Sequence[Rejection]:
        """Rejected messages of a suppressed user are not kept in `rejects` either."""
        suppressed = self.of(source)
        if not suppressed or not rejections:
            return rejections
        kept = [r for r in rejections if user_id_of(r.payload) not in suppressed]
        if len(kept) != len(rejections):
            self.suppressed[source] = self.suppressed.get(source, 0) + len(rejections) - len(kept)
        return kept


def user_id_of(payload: str) -> str | None:
    """A message's `userId` as text (a number too), None when absent or unreadable."""
    try:
        user_id = _head_decoder.decode(payload).userId
    except (msgspec.MsgspecError, RecursionError):
        return None
    return None if user_id is None else str(user_id)
