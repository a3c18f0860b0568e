"""Each node's suppressions in force, fed by a watch of the regulations bucket's
`suppression.>` keys: the node's ingest drops a suppressed user's messages as the SQLite
backend's does (`cdpd.privacy.suppression`).

The watch is an ordered consumer pushing every change as the bucket's stream stores it, so a
suppression written through any node is in force here after one delivery from the cluster
(milliseconds on a LAN; `SUPPRESSION_BOUND_S` is what the deletion worker allows for it).
A watch that fails is restarted by the supervisor and reads every suppression again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec
import nats.errors
import structlog
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from cdpd.cluster.regulation_records import SUPPRESSION, SuppressionRecord
from cdpd.ingest.errors import ApiError
from cdpd.privacy.suppression import Suppressions

log = structlog.get_logger("cdpd.privacy")

SUPPRESSION_BOUND_S = 2.0  # a suppression is in force on every connected node within this
WAIT_S = 1.0  # how often the watch loop looks at `stop`
# The node's set is rebuilt (O(suppressions)) once a burst of changes pauses for QUIET_S, or
# BURST_S after its first change at the latest: a regulation of 5,000 users rebuilds it a few
# times, not 5,000.
QUIET_S = 0.002
BURST_S = 0.05
_decoder = msgspec.json.Decoder(SuppressionRecord)


class SuppressionFeed:
    """A service (`run(stop)`) keeping `suppressions` equal to the bucket's."""

    def __init__(self, kv: KeyValue, suppressions: Suppressions) -> None:
        self._kv = kv
        self._suppressions = suppressions
        self._entries: dict[str, tuple[str, str]] = {}
        self._shown: frozenset[str] = frozenset()  # the keys of the set in force
        self._changed = asyncio.Condition()
        self.ready = asyncio.Event()  # set once every suppression stored was read

    async def run(self, stop: asyncio.Event) -> None:
        watcher = await self._kv.watch(f"{SUPPRESSION}.>")
        # A restarted watch reads every suppression again; until it has (the marker), the set
        # in force stays as it was rather than shrink to what was read so far.
        self._entries, caught_up = {}, False
        loop = asyncio.get_running_loop()
        burst_at: float | None = None  # when the first change not yet in force came
        try:
            while not stop.is_set():
                try:
                    entry = await watcher.updates(  # type: ignore[no-untyped-call]
                        timeout=WAIT_S if burst_at is None else QUIET_S
                    )
                except nats.errors.TimeoutError:
                    if burst_at is not None:  # the burst paused
                        await self._put_in_force()
                        burst_at = None
                    continue
                if entry is None:  # the marker: every stored suppression was given
                    caught_up = True
                    await self._put_in_force()
                    burst_at = None
                    if not self.ready.is_set():
                        log.info("suppressions_in_force", suppressions=len(self._entries))
                    self.ready.set()
                    continue
                self._take(entry)
                if not caught_up:
                    continue
                burst_at = loop.time() if burst_at is None else burst_at
                if loop.time() - burst_at >= BURST_S:
                    await self._put_in_force()
                    burst_at = None
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped

    def _take(self, entry: KeyValue.Entry) -> None:
        if entry.operation in (KV_DEL, KV_PURGE):
            self._entries.pop(entry.key, None)
            return
        try:
            found = _decoder.decode(entry.value or b"")
        except msgspec.DecodeError:
            log.warning("suppression_unreadable", key=entry.key)
            return
        self._entries[entry.key] = (found.user_id, found.source)

    async def _put_in_force(self) -> None:
        self._suppressions.replace(self._entries.values())
        self._shown = frozenset(self._entries)
        async with self._changed:
            self._changed.notify_all()

    async def in_force(self, present: Sequence[str], absent: Sequence[str]) -> None:
        """Return once the node's set has the `present` keys and not the `absent` ones."""

        def shown() -> bool:
            return self._shown.issuperset(present) and self._shown.isdisjoint(absent)

        try:
            async with asyncio.timeout(SUPPRESSION_BOUND_S), self._changed:
                await self._changed.wait_for(shown)
        except TimeoutError:
            raise ApiError(
                503,
                "suppression_pending",
                "the regulation is stored, but this node's suppressions did not show it within"
                f" {SUPPRESSION_BOUND_S:g} s (is the JetStream cluster reachable?)",
            ) from None
