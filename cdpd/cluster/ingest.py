"""Ingest on the JetStream backend: a request's messages are published to the messages stream
and the request is answered only once JetStream has acknowledged every one of them (each ack
is a quorum write of the stream's replicas).

Publishing is pipelined (`cdpd.cluster.publish`): every message of every request in flight goes
out at once and the acks are awaited together, so concurrent requests share round
trips the way the SQLite writer's group commit shares a COMMIT.

Deduplication has two layers. Inside JetStream's own window (`connect.DUPLICATE_WINDOW_S`) the
`Nats-Msg-Id` header drops a second copy. Beyond it, up to `[storage] dedup_window_s`, the
dedup stream holds one marker per message id, on a subject of its own, written only once the
message was acknowledged: a message whose marker exists is a duplicate. The markers are read
before the messages are published and written after their acks, so a request that fails
between the two leaves no marker, and the client's retry is stored (at worst, after a crash
right after the acks, a retry later than JetStream's window is stored twice: a duplicate,
never a loss).
Rejects and the rows governance adds (violations, blocked messages...) go to the aux stream as
JSON, in the same pipeline.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Sequence

import msgspec
import structlog
from nats.aio.client import Client

from cdpd.cluster.connect import DUPLICATE_WINDOW_S
from cdpd.cluster.layout import Layout, dedup_id, headers_of
from cdpd.cluster.publish import Ack, NoStream, Publisher
from cdpd.config import Config
from cdpd.model.rows import OutboxRow, RejectRow
from cdpd.outbox.writer import AppendResult, ExtraRows, OutboxUnavailable

log = structlog.get_logger("cdpd.cluster")

# JetStream's answer when a subject of the dedup stream already holds its one marker.
MARKER_EXISTS = 10077
NOT_FOUND = 404
_INSERT_INTO = re.compile(r"INSERT\s+(?:OR\s+\w+\s+)?INTO\s+(\w+)\s*\(([^)]*)\)", re.I)
_encode = msgspec.json.encode

Publish = tuple[str, bytes, dict[str, str] | None]
MoreHeaders = Callable[[OutboxRow], dict[str, str]]


class Refused(Exception):
    """JetStream answered a publish with an error."""


class JetStreamAppender:
    """The ingest side of a node: `check_accepting` and `append`, like the outbox writer."""

    def __init__(
        self,
        client: Client,
        publisher: Publisher,
        layout: Layout,
        *,
        dedup_window_s: int,
        dedup_scope: str = "source",
        ack_timeout_s: float = 5.0,
        retry_after_s: int = 2,
    ) -> None:
        self._client = client
        self._publisher = publisher
        self._layout = layout
        self._get_last = f"$JS.API.STREAM.MSG.GET.{layout.dedup_stream}"
        self._dedup = dedup_window_s > 0
        # Markers only where JetStream's own window is too short to cover cdpd's.
        self._markers = dedup_window_s > DUPLICATE_WINDOW_S
        self._by_source = dedup_scope == "source"
        self._ack_timeout_s = ack_timeout_s
        self._retry_after_s = retry_after_s
        self._closing = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.published = 0
        self.duplicates = 0
        self.failures = 0
        # Told of each message stored: (source, received_at, type); a node's counts per interval.
        self.accepted: Callable[[str, str, str], None] = _not_counted

    @classmethod
    def of(
        cls,
        config: Config,
        client: Client,
        publisher: Publisher,
        layout: Layout,
        *,
        ack_timeout_s: float | None = None,
    ) -> JetStreamAppender:
        """The appender `config` asks for (its dedup window and scope, its ack timeout)."""
        return cls(
            client,
            publisher,
            layout,
            dedup_window_s=config.storage.dedup_window_s,
            dedup_scope=config.storage.dedup_scope,
            ack_timeout_s=ack_timeout_s or config.storage.jetstream.ack_timeout_s,
            retry_after_s=config.storage.full_retry_after_s,
        )

    # -- the writer's interface -----------------------------------------------------------------

    def check_accepting(self) -> None:
        if self._closing:
            raise OutboxUnavailable("shutting_down", "cdpd is shutting down", 1)
        if not self._client.is_connected:
            raise OutboxUnavailable(
                "cluster_unreachable",
                "the JetStream cluster cannot be reached; nothing was stored",
                self._retry_after_s,
            )

    async def append(
        self,
        rows: Sequence[OutboxRow],
        rejects: Sequence[RejectRow],
        received_at_ms: int,
        extra: ExtraRows = (),
        *,
        more_headers: MoreHeaders | None = None,
    ) -> AppendResult:
        """Returns once JetStream acknowledged every message, reject and extra row; raises
        OutboxUnavailable (a 503 with Retry-After) when it did not within the ack timeout.
        `more_headers(row)`: headers a message carries beside its columns."""
        self.check_accepting()
        self._in_flight += 1
        self._idle.clear()
        try:
            return await asyncio.wait_for(
                self._append(rows, rejects, extra, more_headers), self._ack_timeout_s
            )
        except TimeoutError:
            self.failures += 1
            raise self._unavailable("JetStream did not acknowledge in time") from None
        except (Refused, NoStream, OSError) as exc:
            self.failures += 1
            raise self._unavailable(str(exc)) from None
        except Exception as exc:  # nats-py raises several unrelated types for one lost link
            if type(exc).__module__.startswith("nats"):
                self.failures += 1
                raise self._unavailable(f"JetStream refused the write: {exc!r}") from None
            raise
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    # -- shutdown -------------------------------------------------------------------------------

    def close(self) -> None:
        """Refuse new appends; those in flight still get their acks."""
        self._closing = True

    async def drained(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) for the appends in flight."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("jetstream_appends_unfinished", appends=self._in_flight)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- the work -------------------------------------------------------------------------------

    async def _append(
        self,
        rows: Sequence[OutboxRow],
        rejects: Sequence[RejectRow],
        extra: ExtraRows,
        more_headers: MoreHeaders | None,
    ) -> AppendResult:
        unique = first_of_each_id(rows, by_source=self._by_source) if self._dedup else list(rows)
        fresh = await self._without_markers(unique) if self._markers else unique
        publishes = [self._message(row, more_headers) for row in fresh]
        publishes += self._aux(rejects, extra)
        acks = await self._publish_all(publishes)
        if self._markers and fresh:
            await self._mark(fresh, [ack.seq for ack in acks[: len(fresh)]])
        stored = 0
        for row, ack in zip(fresh, acks, strict=False):
            if not ack.duplicate:
                stored += 1
                self.accepted(row.source, row.received_at, row.type)
        self.published += stored
        self.duplicates += len(rows) - stored
        return AppendResult(stored, len(rows) - stored)

    def _message(self, row: OutboxRow, more_headers: MoreHeaders | None) -> Publish:
        headers = headers_of(row, by_source=self._by_source)
        if not self._dedup:
            del headers["Nats-Msg-Id"]
        if more_headers is not None:
            headers.update(more_headers(row))
        return self._layout.subject_for(row), row.payload.encode(), headers

    def _aux(self, rejects: Sequence[RejectRow], extra: ExtraRows) -> list[Publish]:
        subject = self._layout.aux_subject
        publishes: list[Publish] = [(subject("rejects"), _encode(r), None) for r in rejects]
        for statement, extra_rows in extra:
            table, columns = table_and_columns(statement)
            publishes += [
                (subject(table), _encode(dict(zip(columns, row, strict=True))), None)
                for row in extra_rows
            ]
        return publishes

    async def _publish_all(self, publishes: Iterable[Publish]) -> list[Ack]:
        acks = await self._sent(publishes)
        for ack in acks:
            if ack.error is not None:
                raise Refused(f"JetStream refused the write: {ack.error.description}")
        return acks

    async def _sent(self, publishes: Iterable[Publish]) -> list[Ack]:
        """Every publish out before any ack is awaited; the acks in the publishes' order."""
        futures = []
        try:
            futures = await self._publisher.publish_all(list(publishes))
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()  # a wait that ended early leaves nothing waiting

    async def _without_markers(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """The rows whose id has no marker: a marker is written only after its message was
        acknowledged, so one that exists says the message is stored (read from the stream
        leader, in one pipeline)."""
        if not rows:
            return rows
        reads = [
            (self._get_last, msgspec.json.encode({"last_by_subj": subject}), None)
            for subject in self._marker_subjects(rows)
        ]
        answers = await self._sent(reads)
        fresh = []
        for row, answer in zip(rows, answers, strict=True):
            if answer.error is None:
                continue  # marked: stored before
            if answer.error.code != NOT_FOUND:
                raise Refused(f"the dedup stream did not answer: {answer.error.description}")
            fresh.append(row)
        return fresh

    async def _mark(self, rows: list[OutboxRow], seqs: list[int]) -> None:
        """A marker for each message now acknowledged, holding its stream sequence (how
        `cdpd deliveries show` finds a message by its id). One that exists already is refused
        (the subject keeps its first); the message was a duplicate inside JetStream's window."""
        subjects = self._marker_subjects(rows)
        acks = await self._sent(
            (subject, str(seq).encode(), None) for subject, seq in zip(subjects, seqs, strict=True)
        )
        for ack in acks:
            if ack.error is not None and ack.error.err_code != MARKER_EXISTS:
                log.warning("jetstream_marker_not_written", error=ack.error.description)

    def _marker_subjects(self, rows: list[OutboxRow]) -> list[str]:
        return [self._layout.dedup_subject(self._dedup_key(row)) for row in rows]

    def _dedup_key(self, row: OutboxRow) -> str:
        return dedup_id(row, by_source=self._by_source)

    def _unavailable(self, reason: str) -> OutboxUnavailable:
        log.warning("jetstream_append_failed", reason=reason)
        return OutboxUnavailable(
            "cluster_unavailable", f"{reason}; nothing was acknowledged", self._retry_after_s
        )


def first_of_each_id(rows: Sequence[OutboxRow], *, by_source: bool) -> list[OutboxRow]:
    """The first row of each messageId in one request (later ones duplicate it)."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for row in rows:
        key = (row.message_id, row.source if by_source else "")
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


def table_and_columns(statement: str) -> tuple[str, list[str]]:
    """The table and columns an ingest INSERT names: the aux subject and the JSON keys."""
    match = _INSERT_INTO.search(statement)
    if match is None:
        raise ValueError(f"not an INSERT with named columns: {statement[:60]!r}")
    return match.group(1), [c.strip() for c in match.group(2).split(",")]


def _not_counted(source: str, received_at: str, type_: str) -> None:
    """Where nothing counts what is stored (an appender of a CLI command)."""
