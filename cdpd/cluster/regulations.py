"""Regulations on the JetStream backend: kept in the replicated bucket `<STREAM>_regulations`,
so every node answers the regulation API the same.

Keys (docs/scaling.md lists them):
- `regulation.<id>`: the regulation and the progress of each of its targets (JSON); only the
  regulation lease's holder changes it after it is created, at the revision it read;
- `subjects.<id>.<n>`: its user ids, in chunks of at most `CHUNK_BYTES` of JSON;
- `due.<id>`: present while the regulation is unfinished (the worker's list of work);
- `suppression.<user hash>.workspace` and `suppression.<user hash>.source.<source>`: one
  suppression in force (JSON: user id, source, regulation, created at); the user's id hashed,
  as a key cannot hold every character an id may.

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
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from cdpd.config import Config
from cdpd.privacy.regulations import (
    EFFECTS,
    FINISHED,
    NOT_SUPPORTED,
    RUNNING,
    UNFINISHED,
    WORKSPACE,
)
from cdpd.privacy.regulations_store import (
    DueTarget,
    NewRegulation,
    RegulationView,
    SuppressionView,
    TargetUpdate,
    TargetView,
)

CHUNK_BYTES = 256 * 1024  # well under the servers' 1 MB message limit
WRITES_AT_ONCE = 64
REGULATION, SUBJECTS, DUE, SUPPRESSION = "regulation", "subjects", "due", "suppression"
KIND_ORDER = ("outbox", "identity")
# Waits until this node's suppression watch shows the first keys and not the second.
InForce = Callable[
    [Sequence[str], Sequence[str]], Awaitable[None]
]  # shown first, as the SQLite backend shows them


class TargetState(msgspec.Struct):
    """One target's progress: the columns of the SQLite backend's `regulation_targets`."""

    target: str
    kind: str
    status: str
    next_attempt_at: str
    rows_removed: int = 0
    attempts: int = 0
    first_attempt_at: str | None = None
    last_status: int | None = None
    last_error: str | None = None
    finished_at: str | None = None


class RegulationRecord(msgspec.Struct):
    """`regulation.<id>`."""

    id: str
    regulation_type: str
    subject_type: str
    source: str | None
    status: str
    created_at: str
    finished_at: str | None
    subject_count: int
    subject_chunks: int
    targets: list[TargetState] = []

    def view(self, *, with_targets: bool) -> RegulationView:
        found = RegulationView(
            self.id,
            self.regulation_type,
            self.subject_type,
            self.source,
            self.status,
            self.created_at,
            self.finished_at,
            self.subject_count,
        )
        if not with_targets:
            return found
        ordered = sorted(self.targets, key=_shown_order)
        return msgspec.structs.replace(found, targets=[_target_view(t) for t in ordered])

    def due(self, target: TargetState) -> DueTarget:
        return DueTarget(
            self.id,
            self.regulation_type,
            self.source,
            target.target,
            target.kind,
            target.attempts,
            target.first_attempt_at,
        )


class SuppressionRecord(msgspec.Struct, frozen=True):
    user_id: str
    source: str  # WORKSPACE for every source
    regulation_id: str
    created_at: str


def _shown_order(target: TargetState) -> tuple[bool, bool, str, str]:
    return (target.kind != KIND_ORDER[0], target.kind != KIND_ORDER[1], target.kind, target.target)


def _target_view(t: TargetState) -> TargetView:
    return TargetView(
        t.target,
        t.kind,
        t.status,
        t.rows_removed,
        t.attempts,
        t.next_attempt_at if t.status in UNFINISHED else None,
        t.last_status,
        t.last_error,
        t.finished_at,
    )


async def _all_of(writes: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """The writes, `WRITES_AT_ONCE` in flight at a time."""
    for start in range(0, len(writes), WRITES_AT_ONCE):
        await asyncio.gather(*(write() for write in writes[start : start + WRITES_AT_ONCE]))


def user_hash(user_id: str) -> str:
    return hashlib.blake2b(user_id.encode(), digest_size=16).hexdigest()


def suppression_key(user_id: str, source: str) -> str:
    scope = "workspace" if source == WORKSPACE else f"source.{source}"
    return f"{SUPPRESSION}.{user_hash(user_id)}.{scope}"


def chunks(subject_ids: Sequence[str], max_bytes: int = CHUNK_BYTES) -> list[list[str]]:
    """The ids in order, in lists whose JSON stays under `max_bytes`."""
    found: list[list[str]] = [[]]
    size = 2
    for subject in subject_ids:
        cost = len(msgspec.json.encode(subject)) + 1
        if found[-1] and size + cost > max_bytes:
            found.append([])
            size = 2
        found[-1].append(subject)
        size += cost
    return found


def record_of(new: NewRegulation, subject_chunks: int) -> RegulationRecord:
    """What `regulations_store.insert` writes on the SQLite backend, as one record; a
    regulation with work to do starts RUNNING (its suppressions are in force at once)."""
    if new.subject_type != "USER_ID":
        status, targets = NOT_SUPPORTED, []
    else:
        status = RUNNING if new.targets else FINISHED
        targets = [
            TargetState(
                t.name,
                t.kind,
                t.status,
                next_attempt_at=new.created_at,
                last_error=t.note,
                finished_at=None if t.status in UNFINISHED else new.created_at,
            )
            for t in new.targets
        ]
    return RegulationRecord(
        new.id,
        new.regulation_type,
        new.subject_type,
        new.source,
        status,
        new.created_at,
        None if status == RUNNING else new.created_at,
        len(new.subject_ids),
        subject_chunks,
        targets,
    )


def apply(
    record: RegulationRecord, update: TargetUpdate, overall: Callable[[list[str]], str]
) -> None:
    """One attempt's outcome into the record, and the regulation's status from its targets'."""
    for target in record.targets:
        if target.target == update.target:
            target.status = update.status
            target.attempts = update.attempts
            target.first_attempt_at = update.first_attempt_at
            target.next_attempt_at = update.next_attempt_at
            target.rows_removed += update.rows_removed
            target.last_status = update.last_status
            target.last_error = update.last_error
            target.finished_at = update.finished_at
    record.status = overall([t.status for t in record.targets])
    record.finished_at = None if record.status == RUNNING else update.next_attempt_at


async def current(
    kv: KeyValue, pattern: str, *, meta_only: bool = False
) -> AsyncIterator[KeyValue.Entry]:
    """The entries whose keys match `pattern` as they are now (deleted keys left out)."""
    watcher = await kv.watch(pattern, ignore_deletes=True, meta_only=meta_only)
    try:
        async for entry in watcher:
            if entry is None:  # the marker: every current entry was given
                return
            yield entry
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped


class ClusterRegulations:
    """The regulation API's book on the JetStream backend (`RegulationBook`)."""

    def __init__(self, config: Config, kv: KeyValue, in_force: InForce) -> None:
        self._config = config
        self._kv = kv
        self._in_force = in_force
        self._encoder = msgspec.json.Encoder()

    @property
    def config(self) -> Config:
        return self._config

    async def create(self, new: NewRegulation) -> None:
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
        keys = current(self._kv, f"{SUPPRESSION}.>", meta_only=True)
        return [entry.key async for entry in keys if entry.key.split(".")[1] in hashes]

    async def read(self, regulation_id: str) -> tuple[RegulationRecord, int] | None:
        try:
            entry = await self._kv.get(f"{REGULATION}.{regulation_id}")
        except (KeyNotFoundError, ValueError):  # ValueError: not a valid key
            return None
        return msgspec.json.decode(entry.value or b"", type=RegulationRecord), entry.revision or 0

    async def show(self, regulation_id: str) -> RegulationView | None:
        found = await self.read(regulation_id)
        return None if found is None else found[0].view(with_targets=True)

    async def listing(
        self, *, status: str | None, source: str | None, after_id: str | None, count: int
    ) -> list[RegulationView]:
        records = [
            msgspec.json.decode(entry.value or b"", type=RegulationRecord)
            async for entry in current(self._kv, f"{REGULATION}.*")
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
        found = sorted(
            (s for s in await self.suppressions() if s.user_id > (after_user or "")),
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
            async for entry in current(self._kv, f"{SUPPRESSION}.>")
        ]

    # -- the worker's ----------------------------------------------------------------------------

    async def due_ids(self) -> list[str]:
        """Unfinished regulations, oldest first."""
        keys = [entry.key async for entry in current(self._kv, f"{DUE}.*", meta_only=True)]
        return sorted(key.partition(".")[2] for key in keys)

    async def subjects(self, record: RegulationRecord) -> list[str]:
        users: list[str] = []
        for number in range(record.subject_chunks):
            entry = await self._kv.get(f"{SUBJECTS}.{record.id}.{number}")
            users += msgspec.json.decode(entry.value or b"[]", type=list[str])
        return users

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
