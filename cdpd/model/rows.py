"""The rows the outbox stores, as ingest hands them to the writer (README: "The outbox file")."""

from __future__ import annotations

import msgspec


class OutboxRow(msgspec.Struct, frozen=True, gc=False):
    """One accepted message: the columns of `messages`, in their order."""

    message_id: str
    source: str
    type: str
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    received_at: str
    payload: str


class RejectRow(msgspec.Struct, frozen=True, gc=False):
    """One rejected message: the columns of `rejects`, in their order."""

    received_at: str
    source: str | None
    request_id: str
    reason_code: str
    reason: str
    message_id: str | None
    payload: str


class MessageView(msgspec.Struct, frozen=True, gc=False):
    """One message as a destination sees it: what to send, and its history with that
    destination (attempts made before this one)."""

    seq: int
    message_id: str
    payload: str  # the stored JSON, byte for byte
    attempts: int = 0
    first_attempt_at: str | None = None
    source: str = ""  # the source it was sent to

    @property
    def id(self) -> int:
        """Identifies the delivery within its destination (the message's seq)."""
        return self.seq
