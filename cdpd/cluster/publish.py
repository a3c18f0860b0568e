"""Pipelined JetStream publishing: many publishes go out before the first ack comes back, each
ack (or refusal) answering its own future.

nats-py's `publish_async` does the same but leaves a future unanswered for ever when JetStream
answers with an error (its error parsing raises inside the reply callback), and the dedup
stream's refusals are exactly such errors; so the replies are read here.
"""

from __future__ import annotations

import asyncio
import itertools

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

NO_RESPONDERS = "503"


class AckError(msgspec.Struct, frozen=True):
    code: int = 0
    err_code: int = 0
    description: str = ""


class Ack(msgspec.Struct, frozen=True):
    """JetStream's answer to one publish: where it was stored, or why it was not."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: AckError | None = None


class NoStream(Exception):
    """No stream (or no stream leader) answered: the cluster has no quorum for it."""


_ack = msgspec.json.Decoder(Ack)


class Publisher:
    """Publishes with a reply subject of its own and matches the acks to futures."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._prefix = ""
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[Ack]] = {}

    async def start(self) -> None:
        self._prefix = self._client.new_inbox()
        await self._client.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def publish(
        self, subject: str, body: bytes, headers: dict[str, str] | None = None
    ) -> asyncio.Future[Ack]:
        """Send now; the future is answered by the ack. Cancel it to stop waiting."""
        token = str(next(self._tokens))
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        future.add_done_callback(lambda _: self._waiting.pop(token, None))
        await self._client.publish(subject, body, reply=f"{self._prefix}.{token}", headers=headers)
        return future

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject[len(self._prefix) + 1 :])
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            future.set_exception(NoStream("no JetStream stream answered (no quorum?)"))
            return
        try:
            future.set_result(_ack.decode(msg.data))
        except msgspec.DecodeError as exc:
            future.set_exception(exc)
