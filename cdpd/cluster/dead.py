"""Dead letters on the JetStream backend: a message a destination gave up on is published to
`CDPD_DEAD` on `cdpd.dead.<destination>` (its body and headers as stored, plus why it died), and
replaying one republishes it on its partition's subject for that destination alone (the
`Cdpd-Destination` header), then removes it from the dead stream."""

from __future__ import annotations

from urllib.parse import quote, unquote

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from cdpd.cluster.browse import browse
from cdpd.cluster.layout import DESTINATION, MESSAGE_ID, MSG_ID, Layout, name_of, row_of
from cdpd.delivery.store import DeadDelivery

ATTEMPTS = "Cdpd-Attempts"
LAST_STATUS = "Cdpd-Last-Status"
LAST_ERROR = "Cdpd-Last-Error"
DEAD_AT = "Cdpd-Dead-At"
SEQ = "Cdpd-Seq"  # the message's sequence in the messages stream
SUBJECT = "Cdpd-Subject"  # the subject it was accepted on (its partition)


class Death(msgspec.Struct, frozen=True):
    destination: str
    seq: int
    subject: str
    attempts: int
    last_status: int | None
    last_error: str | None
    at: str


def dead_headers(original: dict[str, str] | None, death: Death) -> dict[str, str]:
    headers = {k: v for k, v in (original or {}).items() if not k.startswith("Nats-")}
    headers.update(
        {
            # A node that dies between publishing and `term` publishes it again: one copy. A
            # replayed message given up again has made more attempts: a letter of its own.
            MSG_ID: f"dead:{death.destination}:{death.seq}:{death.attempts}",
            DESTINATION: death.destination,
            ATTEMPTS: str(death.attempts),
            LAST_ERROR: quote(death.last_error or "", safe=" "),
            DEAD_AT: death.at,
            SEQ: str(death.seq),
            SUBJECT: death.subject,
        }
    )
    if death.last_status is not None:
        headers[LAST_STATUS] = str(death.last_status)
    return headers


async def bury(js: JetStreamContext, layout: Layout, body: bytes, headers: dict[str, str]) -> None:
    await js.publish(layout.dead_subject(headers[DESTINATION]), body, headers=headers)


def describe(headers: dict[str, str]) -> DeadDelivery:
    status = headers.get(LAST_STATUS)
    return DeadDelivery(
        destination=headers.get(DESTINATION, ""),
        seq=int(headers.get(SEQ, "0")),
        message_id=unquote(headers.get(MESSAGE_ID, "")),
        attempts=int(headers.get(ATTEMPTS, "0")),
        last_status=int(status) if status else None,
        last_error=unquote(headers.get(LAST_ERROR, "")) or None,
        finished_at=headers.get(DEAD_AT),
    )


async def dead_letters(
    js: JetStreamContext, layout: Layout, destination: str | None, limit: int
) -> list[tuple[int, DeadDelivery, bytes, dict[str, str]]]:
    """The dead letters of `destination` (every destination: None), oldest first, with their
    sequence in the dead stream, body and headers."""
    subject = layout.dead_subject(destination) if destination else layout.dead_subjects
    try:
        info = await js.stream_info(layout.dead_stream)
    except NotFoundError:
        return []
    if info.state.messages == 0:
        return []
    found = []
    for msg in await browse(js, layout.dead_stream, subject, limit):
        headers = dict(msg.headers or {})
        found.append((msg.metadata.sequence.stream, describe(headers), msg.data, headers))
    return found


async def replay(js: JetStreamContext, layout: Layout, destination: str, limit: int) -> int:
    """Republish the destination's dead letters for it alone; how many went back."""
    replayed = 0
    for dead_seq, _, body, headers in await dead_letters(js, layout, destination, limit):
        row = row_of(headers, body)
        # It keeps the sequence it was accepted with (`Cdpd-Seq`): its ledger row's.
        again = {k: v for k, v in headers.items() if not k.startswith("Cdpd-") or k in _KEPT}
        again[DESTINATION] = destination
        again[MSG_ID] = f"replay:{destination}:{dead_seq}"
        subject = headers.get(SUBJECT) or layout.subject_for(row)
        await js.publish(subject, body, headers=again)
        await js.delete_msg(layout.dead_stream, dead_seq)
        replayed += 1
    return replayed


_KEPT = {
    SEQ,
    "Cdpd-Message-Id",
    "Cdpd-Source",
    "Cdpd-Type",
    "Cdpd-Event",
    "Cdpd-User-Id",
    "Cdpd-Anonymous-Id",
    "Cdpd-Received-At",
}


async def counts(js: JetStreamContext, layout: Layout) -> dict[str, int]:
    """Dead letters per destination, from the dead stream's per-subject counts."""
    try:
        info = await js.stream_info(layout.dead_stream, subjects_filter=layout.dead_subjects)
    except NotFoundError:
        return {}
    prefix = layout.dead_subject("")
    return {name_of(s[len(prefix) :]): n for s, n in (info.state.subjects or {}).items()}
