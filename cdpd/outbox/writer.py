"""The only writer to the outbox: eager group commit, so a 200 always follows a COMMIT.

Requests hand their rows to `append` and wait. Whenever the writer is free it takes everything
that has arrived (up to `commit_max_rows`, never splitting a request), writes it in one
transaction and wakes the waiting requests. Under load, groups grow by themselves while the
previous commit runs; when idle, a lone request is committed at once, with no timer to wait on.

Later stages change the outbox through `transact`: their operations run in the same cycle and
transaction as the ingest group, so every write goes through this one connection, in order.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

import aiosqlite
import msgspec
import structlog

from cdpd.model.rows import OutboxRow, RejectRow
from cdpd.model.timestamps import format_ms

log = structlog.get_logger()

T = TypeVar("T")
DedupScope = Literal["source", "global"]
Operation = Callable[[aiosqlite.Connection], Awaitable[T]]

# Rows go in as one multi-row statement per chunk rather than one statement per row: the
# sqlite3 module releases and retakes the GIL around every statement step, and under load each
# retake waits for the event loop thread to yield it. A message is a duplicate when the same
# messageId was stored at or after its row's cutoff (column9): by the same source
# (dedup_scope "source"), or by any source ("global", Segment's rule).
INSERT_MESSAGES = """
INSERT INTO messages (message_id, source, type, event, user_id, anonymous_id, received_at, payload)
SELECT column1, column2, column3, column4, column5, column6, column7, column8
FROM (VALUES {values})
WHERE NOT EXISTS (
    SELECT 1 FROM messages AS m
    WHERE m.message_id = column1 AND m.received_at >= column9 {same_source}
)
"""
SAME_SOURCE = {"source": "AND m.source = column2", "global": ""}
ROWS_PER_STATEMENT = 500
ROW_VALUES = 9  # the eight columns and the dedup cutoff
INSERT_REJECT = """
INSERT INTO rejects (received_at, source, request_id, reason_code, reason, message_id, payload)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""
SELECT_IDS_AFTER = "SELECT message_id, source FROM messages WHERE seq > ?"
SELECT_LAST_SEQ = "SELECT seq FROM sqlite_sequence WHERE name = 'messages'"
NO_DEDUP_CUTOFF = "9999"  # sorts after every timestamp: nothing counts as a duplicate
astuple = msgspec.structs.astuple


class AppendResult(msgspec.Struct, frozen=True, gc=False):
    stored: int
    duplicates: int


class OutboxUnavailable(Exception):
    """The outbox cannot take writes now (disk or size limit, or a closed writer)."""

    def __init__(self, code: str, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


# Further rows a request appends with its messages, as (INSERT statement, rows) pairs: e.g.
# governance's violations. They are written in the messages' transaction.
ExtraRows = Sequence[tuple[str, Sequence[Sequence[object]]]]


class _Pending(msgspec.Struct, frozen=True):
    rows: Sequence[OutboxRow]
    rejects: Sequence[RejectRow]
    dedup_cutoff: str
    done: asyncio.Future[AppendResult]
    extra: ExtraRows = ()


class _Op(msgspec.Struct, frozen=True):
    run: Operation[Any]
    done: asyncio.Future[Any]
    statement: tuple[str, Sequence[object]] | None = None  # an operation that is one statement


class OutboxWriter:
    def __init__(
        self,
        conn: aiosqlite.Connection,
        *,
        commit_max_rows: int,
        dedup_window_s: int,
        full_retry_after_s: int,
        clock_s: Callable[[], float],
        dedup_scope: DedupScope = "source",
    ) -> None:
        self._conn = conn
        self._dedup_scope = dedup_scope
        self._commit_max_rows = commit_max_rows
        self._dedup_window_ms = dedup_window_s * 1000
        self._full_retry_after_s = full_retry_after_s
        self._clock_s = clock_s
        self._pending: deque[_Pending] = deque()
        self._ops: deque[_Op] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._stopped = False
        self._refusal: OutboxUnavailable | None = None
        self._full_until_s = 0.0
        self._last_seq = 0
        self._cutoff_second = -1
        self._cutoff = NO_DEDUP_CUTOFF
        self._listeners: list[asyncio.Event] = []
        self._admit: Callable[[int], OutboxUnavailable | None] | None = None
        self.commits = 0
        self.committed_rows = 0

    async def start(self) -> None:
        """Read where the outbox ends; call once before `run`."""
        async with self._conn.execute(SELECT_LAST_SEQ) as cursor:
            row = await cursor.fetchone()
        self._last_seq = int(row[0]) if row else 0

    @property
    def last_seq(self) -> int:
        """The seq of the newest committed message."""
        return self._last_seq

    def on_messages(self, event: asyncio.Event) -> None:
        """Set `event` after every commit that stored new messages."""
        self._listeners.append(event)

    def off_messages(self, event: asyncio.Event) -> None:
        """Stop setting `event` (a lane that a reload replaced)."""
        if event in self._listeners:
            self._listeners.remove(event)

    # -- what request handlers call -------------------------------------------------------------

    def check_accepting(self) -> None:
        """Raise OutboxUnavailable when a write would be refused right now."""
        if self._closing:
            raise OutboxUnavailable("shutting_down", "cdpd is shutting down", 1)
        if self._refusal is not None:
            raise self._refusal
        if self._full_until_s and self._full_until_s > self._clock_s():
            raise OutboxUnavailable(
                "outbox_full",
                "the outbox is full (disk space or max_outbox_bytes); nothing was stored",
                self._full_retry_after_s,
            )

    async def append(
        self,
        rows: Sequence[OutboxRow],
        rejects: Sequence[RejectRow],
        received_at_ms: int,
        extra: ExtraRows = (),
    ) -> AppendResult:
        """Store the rows (and `extra`) durably; returns once they are committed."""
        self.check_accepting()
        done: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        cutoff = self._dedup_cutoff(received_at_ms)
        self._pending.append(_Pending(rows, rejects, cutoff, done, extra))
        self._wakeup.set()
        return await done

    # -- what later stages call -----------------------------------------------------------------

    async def transact(self, operation: Operation[T]) -> T:
        """Run `operation(connection)` inside the next commit; returns its result once
        committed. It must only execute statements: the writer owns BEGIN and COMMIT."""
        if self._stopped:
            raise OutboxUnavailable("shutting_down", "the outbox writer has stopped", 1)
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._ops.append(_Op(operation, done))
        self._wakeup.set()
        return await done

    async def execute(self, sql: str, params: Sequence[object]) -> None:
        """`transact` for one statement: a cycle that holds only it commits in a single hop to
        the SQLite thread (a lane's position moving, say)."""

        async def run(conn: aiosqlite.Connection) -> None:
            await conn.execute(sql, params)

        if self._stopped:
            raise OutboxUnavailable("shutting_down", "the outbox writer has stopped", 1)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ops.append(_Op(run, done, (sql, params)))
        self._wakeup.set()
        await done

    # -- what the space monitor calls -----------------------------------------------------------

    def guard_space(self, admit: Callable[[int], OutboxUnavailable | None]) -> None:
        """Before each commit that stores requests' rows, ask `admit(bytes_about_to_be_written)`;
        a refusal it returns answers that commit's requests (later stages' writes still go)."""
        self._admit = admit

    def refuse(self, reason: OutboxUnavailable | None) -> None:
        """Refuse (or, with None, accept again) new writes, e.g. while the disk is nearly full.
        Accepting again also ends the pause after SQLite said "full": space was measured since."""
        self._refusal = reason
        if reason is None:
            self._full_until_s = 0.0

    # -- the writer task ------------------------------------------------------------------------

    async def run(self) -> None:
        """Commit cycles until `close()` is called and everything pending is written.

        A cycle answers its own failures (SQLite errors, a failing operation) to the requests it
        took, so an exception ends `run` only through a bug. Then the requests of the cycle it
        hit are answered with an error and the rest stay queued: the supervisor's next `run`
        commits them. After `close()` (or a cancellation) the queue is answered "shutting down"
        and a later `run` returns at once."""
        if self._stopped:
            return
        ending = True
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._pending or self._ops:
                    await self._cycle()
                if self._closing:
                    return
        except Exception:
            ending = self._closing  # otherwise a restarted run takes up what is queued
            self._wakeup.set()
            raise
        finally:
            if ending:
                self._closing = True
                self._stopped = True
                self._abandon_pending()

    def close(self) -> None:
        """Refuse new writes; `run` returns after committing what is already pending."""
        self._closing = True
        self._wakeup.set()

    def _abandon_pending(self) -> None:
        """Only reached when the writer task ends: tell waiters nothing was stored."""
        error = OutboxUnavailable("shutting_down", "cdpd is shutting down; nothing was stored", 1)
        waiters = [item.done for item in self._pending] + [op.done for op in self._ops]
        self._pending.clear()
        self._ops.clear()
        for done in waiters:
            if not done.done():
                done.set_exception(error)

    def _take_group(self) -> list[_Pending]:
        if not self._pending:
            return []
        group = [self._pending.popleft()]
        rows = len(group[0].rows)
        while self._pending and rows + len(self._pending[0].rows) <= self._commit_max_rows:
            item = self._pending.popleft()
            group.append(item)
            rows += len(item.rows)
        return group

    def _admitted(self, group: list[_Pending]) -> list[_Pending]:
        """The group, or none of it when the space guard refuses what it would write."""
        if not group or self._admit is None:
            return group
        size = sum(_bytes_of(item) for item in group)
        refusal = self._admit(size)
        if refusal is None:
            return group
        for item in group:
            if not item.done.done():
                item.done.set_exception(refusal)
        return []

    def _take_ops(self) -> list[_Op]:
        ops = list(self._ops)
        self._ops.clear()
        return ops

    async def _cycle(self) -> None:
        group, ops = self._admitted(self._take_group()), self._take_ops()
        if not group and not ops:
            return
        try:
            await self._commit(group, ops)
        except BaseException:
            # A bug or a cancellation: the requests this cycle took are not left waiting.
            error = OutboxUnavailable(
                "outbox_error", "the outbox writer failed; nothing was stored", 1
            )
            for done in [item.done for item in group] + [op.done for op in ops]:
                if not done.done():
                    done.set_exception(error)
            raise

    async def _commit(self, group: list[_Pending], ops: list[_Op]) -> None:
        rows = _first_of_each_id(group, by_source=self._dedup_scope == "source")
        rejects = [reject for item in group for reject in item.rejects]
        extra = [statement for item in group for statement in item.extra]
        try:
            inserted, results = await self._write(rows, rejects, ops, extra)
        except Exception as exc:  # SQLite errors, and any bug in an operation: nothing committed
            await self._fail(group, ops, exc)
            return
        seq_before, self._last_seq = self._last_seq, self._last_seq + inserted
        self.commits += 1
        self.committed_rows += inserted
        duplicates = await self._duplicates_per_request(group, inserted, seq_before)
        for item, dup_count in zip(group, duplicates, strict=True):
            if not item.done.done():
                item.done.set_result(AppendResult(len(item.rows) - dup_count, dup_count))
        for op, result in zip(ops, results, strict=True):
            if not op.done.done():
                op.done.set_result(result)
        if inserted:
            for listener in self._listeners:
                listener.set()

    async def _write(
        self, rows: list[object], rejects: list[RejectRow], ops: list[_Op], extra: ExtraRows = ()
    ) -> tuple[int, list[Any]]:
        """One transaction: `rows` is flat, nine values per row. Returns how many message rows
        were new and each operation's result. A cycle that is a single statement needs no BEGIN
        and COMMIT (the connection is in autocommit mode): one hop to the SQLite thread."""
        chunk = ROWS_PER_STATEMENT * ROW_VALUES
        statements = [
            (_insert_sql(len(params) // ROW_VALUES, self._dedup_scope), params)
            for params in (rows[start : start + chunk] for start in range(0, len(rows), chunk))
        ]
        if len(statements) == 1 and not rejects and not ops and not extra:
            cursor = await self._conn.execute(*statements[0])
            return int(cursor.rowcount), []
        if not statements and not rejects and not extra and len(ops) == 1 and ops[0].statement:
            await self._conn.execute(*ops[0].statement)
            return 0, [None]
        await self._conn.execute("BEGIN IMMEDIATE")
        inserted = 0
        for sql, params in statements:
            cursor = await self._conn.execute(sql, params)
            inserted += cursor.rowcount
        if rejects:
            await self._conn.executemany(INSERT_REJECT, [astuple(r) for r in rejects])
        for sql, extra_rows in extra:
            await self._conn.executemany(sql, extra_rows)
        results = [await op.run(self._conn) for op in ops]
        await self._conn.execute("COMMIT")
        return inserted, results

    async def _duplicates_per_request(
        self, group: list[_Pending], inserted: int, seq_before: int
    ) -> list[int]:
        """How many rows of each request were duplicates. With one writer and AUTOINCREMENT the
        group's new rows hold the seqs just after `seq_before`, so only a group that had
        duplicates needs a query to tell which rows were stored."""
        total = sum(len(item.rows) for item in group)
        if inserted == total:
            return [0] * len(group)
        try:
            async with self._conn.execute(SELECT_IDS_AFTER, (seq_before,)) as cursor:
                stored_ids = {(row[0], row[1]) for row in await cursor.fetchall()}
        except Exception:
            # The rows are committed: acknowledge them even if the counts cannot be split.
            log.exception("outbox_duplicate_count_failed")
            return [0] * len(group)
        counts = []
        for item in group:
            dup_count = 0
            for row in item.rows:
                if (row.message_id, row.source) in stored_ids:
                    stored_ids.discard((row.message_id, row.source))
                else:
                    dup_count += 1
            counts.append(dup_count)
        return counts

    async def _fail(self, group: list[_Pending], ops: list[_Op], exc: Exception) -> None:
        if self._conn.in_transaction:
            try:
                await self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("outbox_rollback_failed")
        error = self._unavailable(exc)
        log.error(
            "outbox_write_failed",
            error=str(exc),
            code=error.code,
            requests=len(group),
            operations=len(ops),
            exc_info=not isinstance(exc, sqlite3.Error),
        )
        for item in group:
            if not item.done.done():
                item.done.set_exception(error)
        for op in ops:
            if not op.done.done():
                op.done.set_exception(exc)

    def _unavailable(self, exc: Exception) -> OutboxUnavailable:
        if isinstance(exc, sqlite3.Error) and _is_full(exc):
            self._full_until_s = self._clock_s() + self._full_retry_after_s
            return OutboxUnavailable(
                "outbox_full",
                "the outbox is full (disk space or max_outbox_bytes); nothing was stored",
                self._full_retry_after_s,
            )
        return OutboxUnavailable(
            "outbox_error", f"the outbox could not be written: {exc}", self._full_retry_after_s
        )

    def _dedup_cutoff(self, received_at_ms: int) -> str:
        """The window's start, to the second (formatted once a second, not once a request)."""
        if self._dedup_window_ms == 0:
            return NO_DEDUP_CUTOFF
        second = received_at_ms // 1000
        if second != self._cutoff_second:
            self._cutoff_second = second
            self._cutoff = format_ms(max(0, second * 1000 - self._dedup_window_ms))
        return self._cutoff


def _first_of_each_id(group: list[_Pending], *, by_source: bool) -> list[object]:
    """The group's rows as flat statement parameters, keeping only the first row of each
    messageId (of each source's, `by_source`; later ones in the same group are duplicates of
    it), unless deduplication is off."""
    seen: set[tuple[str, str]] = set()
    params: list[object] = []
    for item in group:
        dedup = item.dedup_cutoff != NO_DEDUP_CUTOFF
        for row in item.rows:
            key = (row.message_id, row.source if by_source else "")
            if dedup and key in seen:
                continue
            seen.add(key)
            params += astuple(row)
            params.append(item.dedup_cutoff)
    return params


def _bytes_of(item: _Pending) -> int:
    """Roughly what a request adds to the outbox: its payloads (the rest of a row is small)."""
    return sum(len(row.payload) for row in item.rows) + sum(
        len(reject.payload) + len(reject.reason) for reject in item.rejects
    )


@functools.lru_cache(maxsize=2 * ROWS_PER_STATEMENT)
def _insert_sql(row_count: int, scope: DedupScope) -> str:
    values = ",".join(["(?,?,?,?,?,?,?,?,?)"] * row_count)
    return INSERT_MESSAGES.format(values=values, same_source=SAME_SOURCE[scope])


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(exc)
