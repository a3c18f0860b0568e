"""Pipelined JetStream publishing: many publishes go out before the first ack comes back, each
ack (or refusal) answering its own future.

nats-py's `publish_async` does the same but leaves a future unanswered for ever when JetStream
answers with an error (its error parsing raises inside the reply callback), and the dedup
stream's refusals are exactly such errors; so the replies are read here. And a request's
publishes are written as one buffer: nats-py's `publish` checks and encodes each header of each
message again, which cost more CPU than everything else a node does per message; the headers
here are cdpd's own (constant names, values that `layout` made single-line text), so they are
encoded once, and the protocol lines handed to the client's outgoing buffer together.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Sequence

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.protocol.command import hpub_cmd, pub_cmd

NO_RESPONDERS = "503"
_HEADERS_START = b"NATS/1.0\r\n"


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

    async def publish_all(
        self, publishes: Sequence[tuple[str, bytes, dict[str, str] | None]]
    ) -> list[asyncio.Future[Ack]]:
        """Send all at once; a future per publish, in order. Cancel them to stop waiting."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Ack]] = []
        commands = []
        for subject, body, headers in publishes:
            token = str(next(self._tokens))
            future: asyncio.Future[Ack] = loop.create_future()
            self._waiting[token] = future
            future.add_done_callback(functools.partial(self._forget, token))
            futures.append(future)
            reply = f"{self._prefix}.{token}"
            if headers is None:
                commands.append(pub_cmd(subject, reply, body))
            else:
                commands.append(hpub_cmd(subject, reply, header_block(headers), body))
        await self._client._send_command(b"".join(commands))  # private: see the docstring
        await self._client._flush_pending()
        return futures

    def _forget(self, token: str, _: object) -> None:
        self._waiting.pop(token, None)

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


def header_block(headers: dict[str, str]) -> bytes:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return _HEADERS_START + lines.encode() + b"\r\n"
