"""What the regulations bucket holds (`cdpd.cluster.regulations` reads and writes it): a
regulation with its targets' progress, its subjects in chunks, and the suppressions, as msgspec
Structs, with their keys; and how a regulation and one attempt's outcome become a record.

Keys (docs/scaling.md lists them):
- `regulation.<id>`: the regulation and the progress of each of its targets (JSON); only the
  regulation lease's holder changes it after it is created, at the revision it read;
- `subjects.<id>.<n>`: its user ids, in chunks of at most `CHUNK_BYTES` of JSON;
- `due.<id>`: present while the regulation is unfinished (the worker's list of work);
- `erased.<id>.<attempt>.<n>`: a source's regulation with file targets: the message ids its
  `outbox` target found in the streams at that attempt (what each node erases from its files,
  as lines do not say their source), in chunks like the subjects;
- `suppression.<user hash>.workspace` and `suppression.<user hash>.source.<source>`: one
  suppression in force (JSON: user id, source, regulation, created at); the user's id hashed,
  as a key cannot hold every character an id may.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

from cdpd.privacy.regulations import (
    FINISHED,
    NOT_SUPPORTED,
    RUNNING,
    UNFINISHED,
    WORKSPACE,
    overall_status,
)
from cdpd.privacy.regulations_store import (
    DueTarget,
    NewRegulation,
    RegulationView,
    TargetUpdate,
    TargetView,
)

CHUNK_BYTES = 256 * 1024  # well under the servers' 1 MB message limit
REGULATION, SUBJECTS, DUE, SUPPRESSION = "regulation", "subjects", "due", "suppression"
ERASED = "erased"
KIND_ORDER = ("outbox", "identity")  # shown first, as the SQLite backend shows them


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


def apply(record: RegulationRecord, update: TargetUpdate) -> None:
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
    record.status = overall_status([t.status for t in record.targets])
    record.finished_at = None if record.status == RUNNING else update.next_attempt_at
