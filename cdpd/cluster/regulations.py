"""Regulations on the JetStream backend: kept in the replicated bucket `<STREAM>_regulations`,
so every node answers the regulation API the same.

Its keys are in `cdpd.cluster.regulation_records` (and docs/scaling.md).

Creating a regulation writes its subjects, then its suppression changes, then `due`, then the
regulation: a node that dies half-way leaves at most suppressions (or a `due` key) of a
regulation the client was never told of, never a regulation without its suppressions. The
answer waits until this node's own suppression watch (`cdpd.cluster.suppression_feed`) has
seen the changes, so they are in force here before the answer, and on every other node within
that node's watch delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator, Sequence

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from cdpd.cluster.buckets import Latest, current
from cdpd.cluster.layout import Layout
from cdpd.cluster.regulation_records import (
    DUE,
    ERASED,
    REGULATION,
    SUBJECTS,
    SUPPRESSION,
    RegulationRecord,
    SuppressionRecord,
    chunks,
    record_of,
    suppression_key,
    user_hash,
)
from cdpd.config import Config
from cdpd.ingest.errors import ApiError
from cdpd.privacy.regulations import (
    EFFECTS,
    NOT_SUPPORTED,
    UNFINISHED,
    WORKSPACE,
)
from cdpd.privacy.regulations_store import (
    NewRegulation,
    RegulationView,
    SuppressionView,
)

WRITES_AT_ONCE = 64
# A one-off read's consumer is removed by the servers this long after it stopped (nats-py's
# default, 5 minutes, would keep one for every 0.5 s poll of the regulations' worker).
# Waits until this node's suppression watch shows the first keys and not the second.
InForce = Callable[[Sequence[str], Sequence[str]], Awaitable[None]]


@contextlib.contextmanager
def _answered() -> Iterator[None]:
    """A request the cluster did not answer is a 503 (the client retries), not a 500."""
    try:
        yield
    except (nats.errors.Error, TimeoutError) as exc:
        raise ApiError(
            503, "cluster_unreachable", f"the JetStream cluster did not answer: {exc!r}"
        ) from None


async def _all_of(writes: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """The writes, `WRITES_AT_ONCE` in flight at a time."""
    for start in range(0, len(writes), WRITES_AT_ONCE):
        await asyncio.gather(*(write() for write in writes[start : start + WRITES_AT_ONCE]))


class ClusterRegulations:
    """The regulation API's book on the JetStream backend (`RegulationBook`)."""

    def __init__(
        self, config: Config, js: JetStreamContext, kv: KeyValue, in_force: InForce
    ) -> None:
        self._config = config
        self._js = js
        self._bucket = Layout.of(config.storage.jetstream).regulations_bucket
        self._kv = kv
        self._in_force = in_force
        self._encoder = msgspec.json.Encoder()

    @property
    def config(self) -> Config:
        return self._config

    async def _current(self, pattern: str, *, meta_only: bool = False) -> list[Latest]:
        return await current(self._js, self._bucket, pattern, meta_only=meta_only)

    async def create(self, new: NewRegulation) -> None:
        with _answered():
            await self._create(new)

    async def _create(self, new: NewRegulation) -> None:
        parts = chunks(new.subject_ids)
        for number, part in enumerate(parts):
            await self._kv.put(f"{SUBJECTS}.{new.id}.{number}", self._encoder.encode(part))
        record = record_of(new, len(parts))
        present: list[str] = []
        absent: list[str] = []
        if record.status != NOT_SUPPORTED:
            present, absent = await self._change_suppressions(new)
        if record.status in UNFINISHED:
            await self._kv.put(f"{DUE}.{new.id}", b"")
        await self._kv.put(f"{REGULATION}.{new.id}", self._encoder.encode(record))
        await self._in_force(present, absent)

    async def _change_suppressions(self, new: NewRegulation) -> tuple[list[str], list[str]]:
        """The suppression keys that now exist and those that no longer do."""
        suppress = EFFECTS[new.regulation_type].suppress
        if suppress:
            scope = new.source or WORKSPACE
            values = {
                suppression_key(user, scope): SuppressionRecord(user, scope, new.id, new.created_at)
                for user in new.subject_ids
            }
            await _all_of([functools.partial(self._suppress, k, v) for k, v in values.items()])
            return list(values), []
        if suppress is False:
            lifted = await self._suppression_keys(new.subject_ids, new.source)
            await _all_of([functools.partial(self._lift, key) for key in lifted])
            return [], lifted
        return [], []

    async def _suppress(self, key: str, value: SuppressionRecord) -> None:
        # An existing suppression stays as it was (the first regulation's).
        with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError):
            await self._kv.create(key, self._encoder.encode(value))

    async def _lift(self, key: str) -> None:
        with contextlib.suppress(KeyNotFoundError):
            await self._kv.delete(key)

    async def _suppression_keys(self, user_ids: Sequence[str], source: str | None) -> list[str]:
        """A workspace UNSUPPRESS lifts the users' suppressions everywhere (one read of every
        suppression key); a source's, only its own (a workspace suppression wins over it)."""
        if source is not None:
            return [suppression_key(user, source) for user in user_ids]
        hashes = {user_hash(user) for user in user_ids}
        keys = await self._current(f"{SUPPRESSION}.>", meta_only=True)
        return [entry.key for entry in keys if entry.key.split(".")[1] in hashes]

    async def read(self, regulation_id: str) -> tuple[RegulationRecord, int] | None:
        try:
            entry = await self._kv.get(f"{REGULATION}.{regulation_id}")
        except (KeyNotFoundError, ValueError):  # ValueError: not a valid key
            return None
        return msgspec.json.decode(entry.value or b"", type=RegulationRecord), entry.revision or 0

    async def show(self, regulation_id: str) -> RegulationView | None:
        with _answered():
            found = await self.read(regulation_id)
        return None if found is None else found[0].view(with_targets=True)

    async def listing(
        self, *, status: str | None, source: str | None, after_id: str | None, count: int
    ) -> list[RegulationView]:
        with _answered():
            records = [
                msgspec.json.decode(entry.value or b"", type=RegulationRecord)
                for entry in await self._current(f"{REGULATION}.*")
            ]
        kept = sorted(
            (
                r
                for r in records
                if (status is None or r.status == status)
                and (source is None or r.source == source)
                and (after_id is None or r.id < after_id)
            ),
            key=lambda r: r.id,
            reverse=True,
        )
        return [r.view(with_targets=False) for r in kept[:count]]

    async def suppression_listing(
        self, *, after_user: str | None, count: int
    ) -> list[SuppressionView]:
        with _answered():
            stored = await self.suppressions()
        found = sorted(
            (s for s in stored if s.user_id > (after_user or "")),
            key=lambda s: (s.user_id, s.source),
        )
        return [
            SuppressionView(
                s.user_id,
                None if s.source == WORKSPACE else s.source,
                s.regulation_id,
                s.created_at,
            )
            for s in found[:count]
        ]

    async def suppressions(self) -> list[SuppressionRecord]:
        return [
            msgspec.json.decode(entry.value or b"", type=SuppressionRecord)
            for entry in await self._current(f"{SUPPRESSION}.>")
        ]

    # -- the worker's ----------------------------------------------------------------------------

    async def due_ids(self) -> list[str]:
        """Unfinished regulations, oldest first."""
        keys = [entry.key for entry in await self._current(f"{DUE}.*", meta_only=True)]
        return sorted(key.partition(".")[2] for key in keys)

    async def subjects(self, record: RegulationRecord) -> list[str]:
        users: list[str] = []
        for number in range(record.subject_chunks):
            entry = await self._kv.get(f"{SUBJECTS}.{record.id}.{number}")
            users += msgspec.json.decode(entry.value or b"[]", type=list[str])
        return users

    async def keep_erased(self, regulation_id: str, attempt: int, message_ids: set[str]) -> None:
        """The message ids one attempt of the `outbox` target found (before it deletes them)."""
        for number, part in enumerate(chunks(sorted(message_ids))):
            key = f"{ERASED}.{regulation_id}.{attempt}.{number}"
            await self._kv.put(key, self._encoder.encode(part))

    async def erased(self, regulation_id: str) -> set[str]:
        """Every message id the regulation's `outbox` attempts found."""
        found: set[str] = set()
        for entry in await self._current(f"{ERASED}.{regulation_id}.>"):
            found.update(msgspec.json.decode(entry.value or b"[]", type=list[str]))
        return found

    async def write(self, record: RegulationRecord, revision: int) -> int:
        """Store `record` at `revision` (raises KeyWrongLastSequenceError when anyone else
        wrote it since); a settled regulation leaves the worker's list."""
        revision = await self._kv.update(
            f"{REGULATION}.{record.id}", self._encoder.encode(record), revision
        )
        if record.status not in UNFINISHED:
            await self.forget(record.id)
        return revision

    async def forget(self, regulation_id: str) -> None:
        with contextlib.suppress(KeyNotFoundError):
            await self._kv.delete(f"{DUE}.{regulation_id}")
