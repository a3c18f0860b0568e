"""The live debugger's tap on ingest: a sampled copy of the messages a source accepts, for the
people watching that source, and nothing at all when nobody watches.

Ingest calls `offer` only when `watched` is true (one dict lookup per request otherwise). Each
watcher keeps at most `capacity` messages (the oldest go first) and takes at most
`PER_REQUEST` from one request, so a flood costs a watched source a bounded amount of work per
request and a bounded amount of memory per watcher.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from cdpd.model.rows import OutboxRow

PER_REQUEST = 20


class Watcher:
    def __init__(self, source: str, capacity: int) -> None:
        self.source = source
        self.messages: deque[OutboxRow] = deque(maxlen=capacity)
        self.ready = asyncio.Event()
        self.offered = 0


class Tap:
    def __init__(self) -> None:
        self._watchers: dict[str, set[Watcher]] = {}

    @property
    def watched(self) -> bool:
        return bool(self._watchers)

    def watch(self, source: str, capacity: int) -> Watcher:
        watcher = Watcher(source, capacity)
        self._watchers.setdefault(source, set()).add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        watchers = self._watchers.get(watcher.source)
        if watchers is None:
            return
        watchers.discard(watcher)
        if not watchers:
            del self._watchers[watcher.source]

    def offer(self, source: str, rows: Sequence[OutboxRow]) -> None:
        watchers = self._watchers.get(source)
        if not watchers or not rows:
            return
        sample = rows[:PER_REQUEST]
        for watcher in watchers:
            watcher.messages.extend(sample)
            watcher.offered += len(rows)
            watcher.ready.set()
