"""The exception ledger on the JetStream backend: one key per message a destination did not
take on its first attempt, in the replicated key-value bucket `CDPD_ledger`, written by the node
that saw the attempt (only the node holding a message settles it, so writes do not race).

Keys are `row.<destination>.<seq>` (a `.` in a destination's name becomes `=`: key tokens are
separated by dots), values a `LedgerRow` as JSON with the attempts made. A row says `retrying`
while JetStream holds the message for its redelivery, `pending` for a message put back by
replay, and `delivered` or `dead` once it is final; final rows expire with the bucket's age.
Replay jobs are `job.<destination>.<id>` in the same bucket.

Whoever else changes rows (`cdpd deliveries retry`, `cdpd replay --dead`, a lane giving up
what waited its whole retry window) may race with the node settling the message, so it
changes a row only over the revision it read (`Ledger.change`): a copy read before an
outcome was written never overwrites that outcome."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from cdpd.cluster.buckets import current
from cdpd.delivery.store import AttemptRow, DeliveryStatus, ReplayJob

ROW, JOB = "row", "job"
CHANGE_ATTEMPTS = 5  # reads of a row that others keep writing, before a change gives up


class LedgerBusy(RuntimeError):
    """A row changed under every one of `CHANGE_ATTEMPTS` tries to change it."""


class LedgerRow(msgspec.Struct, kw_only=True):
    destination: str
    seq: int
    message_id: str
    order_key: str | None
    state: str  # pending, retrying, delivered or dead
    attempts: int = 0
    created_at: str
    first_attempt_at: str | None = None
    next_attempt_at: str | None = None
    last_status: int | None = None
    last_error: str | None = None
    finished_at: str | None = None
    history: list[AttemptRow] = msgspec.field(default_factory=list)

    def status(self, unfinished: Sequence[str]) -> DeliveryStatus:
        return DeliveryStatus(
            self.destination,
            self.seq,
            self.message_id,
            self.state,
            self.attempts,
            self.next_attempt_at if self.state in unfinished else None,
            self.last_status,
            self.last_error,
            list(self.history),
        )


def key_token(destination: str) -> str:
    return destination.replace(".", "=")


def row_key(destination: str, seq: int) -> str:
    return f"{ROW}.{key_token(destination)}.{seq}"


def job_key(destination: str, job_id: int) -> str:
    return f"{JOB}.{key_token(destination)}.{job_id}"


_row_decoder = msgspec.json.Decoder(LedgerRow)
_job_decoder = msgspec.json.Decoder(ReplayJob)
_encode = msgspec.json.encode


class Ledger:
    """The ledger's rows and replay jobs in one bucket."""

    def __init__(self, js: JetStreamContext, bucket: str, kv: KeyValue) -> None:
        self._js = js
        self._bucket = bucket
        self._kv = kv

    async def get(self, destination: str, seq: int) -> LedgerRow | None:
        try:
            entry = await self._kv.get(row_key(destination, seq))
        except KeyNotFoundError:
            return None
        return _row_decoder.decode(entry.value) if entry.value else None

    async def put(self, row: LedgerRow) -> None:
        await self._kv.put(row_key(row.destination, row.seq), _encode(row))

    async def rows(self, destination: str | None = None) -> list[LedgerRow]:
        """Every row of `destination` (of every destination: None), in seq order."""
        return [row for row, _ in await self.listed(destination)]

    async def listed(self, destination: str | None = None) -> list[tuple[LedgerRow, int]]:
        """Every row of `destination` (of every destination: None) with its revision, in seq
        order."""
        pattern = f"{ROW}.{key_token(destination)}.*" if destination else f"{ROW}.>"
        entries = await current(self._js, self._bucket, pattern)
        found = [(_row_decoder.decode(e.value), e.revision) for e in entries if e.value]
        return sorted(found, key=lambda pair: (pair[0].destination, pair[0].seq))

    async def change(
        self, row: LedgerRow, revision: int, edit: Callable[[LedgerRow], bool]
    ) -> bool:
        """Store `edit`'s change of a row read at `revision`. When the row was written since
        (its message settled, say), `edit` is applied to the row as it is now instead. False
        when `edit` leaves the row alone (it returns False) or the row is gone."""
        key = row_key(row.destination, row.seq)
        for _ in range(CHANGE_ATTEMPTS):
            if not edit(row):
                return False
            try:
                await self._kv.update(key, _encode(row), last=revision)
                return True
            except KeyWrongLastSequenceError:
                try:
                    entry = await self._kv.get(key)
                except KeyNotFoundError:
                    return False
                if not entry.value or entry.revision is None:
                    return False
                row, revision = _row_decoder.decode(entry.value), entry.revision
        raise LedgerBusy(f"the ledger row {key} changed under {CHANGE_ATTEMPTS} tries to change it")

    async def put_job(self, job: ReplayJob) -> None:
        await self._kv.put(job_key(job.destination, job.id), _encode(job))

    async def jobs(self, destination: str | None = None) -> list[ReplayJob]:
        pattern = f"{JOB}.{key_token(destination)}.*" if destination else f"{JOB}.>"
        found = [_job_decoder.decode(value) for value in await self._values(pattern)]
        return sorted(found, key=lambda job: job.id)

    async def end_job(self, job: ReplayJob) -> None:
        await self._kv.purge(job_key(job.destination, job.id))

    async def _values(self, pattern: str) -> list[bytes]:
        """The latest value of each key matching `pattern` (deleted keys left out)."""
        return [e.value for e in await current(self._js, self._bucket, pattern) if e.value]
