"""The ingest processor chain: pure steps between normalisation and the outbox append.

Each processor takes one normalised message and returns None to keep it (possibly changed), or
a `Block` or `Reject` verdict with a reason; the first verdict ends the chain. Processors do
no I/O: what they find besides their verdict (violations, schema observations, messages to
forward to another source) goes into `Findings`, which ingest hands to the outbox writer in
the same group commit as the messages. Privacy controls and suppression are further
processors of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from cdpd.model.rows import OutboxRow

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class Message:
    """One message going through the chain: its outbox row, and its payload decoded only when
    a processor asks for it. A processor that changes `body` calls `changed()`."""

    __slots__ = ("_body", "_changed", "row")

    def __init__(self, row: OutboxRow) -> None:
        self.row = row
        self._body: dict[str, Any] | None = None
        self._changed = False

    @property
    def body(self) -> dict[str, Any]:
        if self._body is None:
            self._body = _decode(self.row.payload)
        return self._body

    def changed(self) -> None:
        self._changed = True

    def payload(self) -> str:
        """The JSON text as it stands now."""
        return _encode(self.body).decode() if self._changed else self.row.payload

    def finish(self) -> OutboxRow:
        """The row to store: the original one, or one with the changed payload."""
        if not self._changed:
            return self.row
        body = self.body
        event = body.get("event") if self.row.type == "track" else body.get("name")
        return msgspec.structs.replace(
            self.row, payload=self.payload(), event=event if isinstance(event, str) else None
        )


class Block(msgspec.Struct, frozen=True, gc=False):
    """Keep the message out of the outbox (it goes to `blocked_messages`)."""

    code: str
    reason: str


class Reject(msgspec.Struct, frozen=True, gc=False):
    """Refuse the message as invalid (it goes to `rejects`)."""

    code: str
    reason: str


Verdict = Block | Reject | None


Shape = tuple[str, str, str, str, tuple[str, ...], tuple[str, ...]]


class ViolationRow(msgspec.Struct, frozen=True, gc=False):
    """One row of the `violations` table, in its column order."""

    received_at: str
    source: str
    tracking_plan: str
    message_id: str
    type: str
    event: str | None
    violation_type: str
    field: str
    description: str
    blocked: int


@dataclass
class Findings:
    """What the processors of one request found, besides their verdicts."""

    violations: list[ViolationRow] = field(default_factory=list)
    # (source, type, event, section, names, value types) -> how many messages had that shape
    shapes: dict[Shape, int] = field(default_factory=dict)
    seen_at: str = ""  # when the request's messages were received
    forwarded: list[OutboxRow] = field(default_factory=list)


class Processor(Protocol):
    def __call__(self, message: Message, findings: Findings, /) -> Verdict: ...


@dataclass(frozen=True)
class Chain:
    processors: tuple[Processor, ...]

    def run(self, message: Message, findings: Findings) -> Verdict:
        for processor in self.processors:
            verdict = processor(message, findings)
            if verdict is not None:
                return verdict
        return None
