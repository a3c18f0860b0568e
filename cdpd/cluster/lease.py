"""Leases: which node runs a stage that must run on one node at a time (a warehouse's loads).

A lease is a key in the leases bucket, whose entries expire `LEASE_TTL_S` after their last
write. A node acquires it by creating the key (only one create can succeed), keeps it by
updating at the revision it last wrote (an update fails once anyone else wrote it), and
releases it by deleting at that revision. A node that misses its renewals (a crash, a pause, a
lost link) loses the lease when the entry expires, and another node's create succeeds.

The holder learns it lost the lease at its next renewal, and stops the stage before its next
commit; the revision is the fencing token. The stages also fence themselves where they commit
(a warehouse load holds the warehouse's own lock and checks the position it read), so even a
holder that has not yet noticed its loss cannot load anything twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from cdpd.clock import Clock
from cdpd.cluster.connect import LEASE_TTL_S

log = structlog.get_logger("cdpd.cluster")

RENEW_EVERY_S = LEASE_TTL_S / 4


class Lease:
    """One stage's lease, as seen by one node (`holder` names the node in the value)."""

    def __init__(self, kv: KeyValue, key: str, holder: str) -> None:
        self._kv = kv
        self.key = key
        self.holder = holder
        self.revision = 0  # of our last write; 0 when not held
        self.lost = asyncio.Event()

    @property
    def held(self) -> bool:
        return self.revision != 0 and not self.lost.is_set()

    async def acquire(self) -> bool:
        try:
            self.revision = await self._kv.create(self.key, self.holder.encode())
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            # Held by another; or (not found) it expired between the client's two steps of
            # `create`, so it is free: the next attempt takes it.
            return False
        self.lost.clear()
        log.info("lease_acquired", lease=self.key, holder=self.holder, revision=self.revision)
        return True

    async def renew(self) -> bool:
        """Update at our revision; False (and `lost` set) when someone else holds it now."""
        try:
            self.revision = await self._kv.update(self.key, self.holder.encode(), self.revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            self._lose("taken or expired")
            return False
        return True

    async def confirmed(self) -> bool:
        """Read from the cluster: the key is still at our last write (nobody took it over)."""
        if not self.held:
            return False
        try:
            entry = await self._kv.get(self.key)
        except KeyNotFoundError:
            return False
        return entry.revision == self.revision and entry.value == self.holder.encode()

    async def release(self) -> None:
        if self.revision and not self.lost.is_set():
            with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError):
                await self._kv.delete(self.key, last=self.revision)
            log.info("lease_released", lease=self.key, holder=self.holder)
        self.revision = 0

    def _lose(self, why: str) -> None:
        if not self.lost.is_set():
            log.warning("lease_lost", lease=self.key, holder=self.holder, reason=why)
        self.lost.set()

    async def keep(self, clock: Clock, stop: asyncio.Event) -> None:
        """Renew every `RENEW_EVERY_S` until `stop` or the lease is lost. A renewal that cannot
        reach the cluster in time counts as lost: the entry may expire meanwhile."""
        while not await clock.wait(stop, RENEW_EVERY_S):
            try:
                renewed = await asyncio.wait_for(self.renew(), LEASE_TTL_S / 2)
            except Exception as exc:  # nats-py raises several unrelated types for one lost link
                self._lose(f"renewal failed: {exc!r}")
                return
            if not renewed:
                return


@contextlib.asynccontextmanager
async def holding(lease: Lease, clock: Clock) -> AsyncIterator[Lease]:
    """While the block runs, the lease is renewed; on exit it is released. Acquire first."""
    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(lease.keep(clock, stop), name=f"lease-{lease.key}")
            try:
                yield lease
            finally:
                stop.set()
    finally:
        await lease.release()


async def lead(
    lease: Lease,
    clock: Clock,
    stop: asyncio.Event,
    work: Callable[[Callable[[], bool]], Awaitable[None]],
) -> None:
    """Wait for the lease, then run `work(should_stop)` while it is held (`should_stop()`
    turns True on `stop` or once the lease is lost); after a loss, wait for it again."""

    def should_stop() -> bool:
        return stop.is_set() or not lease.held

    while not stop.is_set():
        if not await lease.acquire():
            await clock.wait(stop, RENEW_EVERY_S)
            continue
        async with holding(lease, clock):
            await work(should_stop)
