"""The NATS JetStream destination: each item is published to the subject its template names,
with the header `Nats-Msg-Id` set to the messageId, and counts as delivered once JetStream's
PubAck (stream and sequence) says a stream stored it; a stream's duplicate window drops a
message sent again under the same id. A batch's items are published together on one
connection, each waiting for its own PubAck.

No stream takes the subject ("no responders"): the stream is missing, a problem of
configuration that is retried, with an error saying so, until someone creates it (or sets
`create_stream`, which creates it on connecting when it does not exist).

nats-py's own reconnecting is off: a connection that fails is closed, and the next send opens
a new one, so a dead server is a retried failure rather than messages buffered in the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp
import nats.errors
import nats.js.errors
from nats.aio.client import Client as Nats
from yarl import URL

from cdpd.destinations import brokers
from cdpd.destinations.actions import Action, Prepared, mapped_json
from cdpd.destinations.base import MAX_ERROR_CHARS, Result, header_problem, secret
from cdpd.destinations.brokers import ACCEPTED, REFUSED, UNAVAILABLE
from cdpd.destinations.settings import NatsDestination
from cdpd.settings import ConfigError

KINDS = brokers.publish_kind("subject", "subject")
PRESETS = brokers.PRESETS
MAX_SUBJECT_BYTES = 512


def check_subject(subject: str) -> str | None:
    """Subjects: `.`-separated tokens, none empty, no `*` or `>` wildcards, no spaces."""
    return brokers.check_tokens(subject, ".", "*>", MAX_SUBJECT_BYTES)


class NatsJetStream:
    def __init__(self, config: NatsDestination, actions: list[Action]) -> None:
        self.name = config.name
        self.actions = actions
        self._servers = config.servers
        self._where = [str(URL(server).with_user(None)) for server in config.servers]  # no secrets
        self._user = config.user
        self._password = secret(config.name, config.password, config.password_env, "password")
        self._token = secret(config.name, config.token, config.token_env, "token")
        self._creds_file = config.creds_file
        self._timeout_s = config.timeout_s
        self._names = brokers.Names(config.name, "subject", config.subject, actions, check_subject)
        self._create_stream = config.create_stream
        self._stream_subjects = config.stream_subjects or [brokers.SLOT.sub("*", config.subject)]
        if config.create_stream is not None:
            _check_stream(config.name, config.create_stream, self._stream_subjects)
        self._connection = brokers.Connection(self._open, _close, alive=_alive)
        self._last_error: Exception | None = None

    async def _open(self) -> Nats:
        client = Nats()
        self._last_error = None
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._connect(client)
        except nats.errors.NoServersError:
            await client.close()  # what a failed connect leaves open
            last = brokers.problem(self._last_error) if self._last_error else "no answer"
            where = ", ".join(self._where)
            raise ConnectionError(f"no server of {where} took a connection ({last})") from None
        except BaseException:
            await client.close()
            raise
        return client

    async def _connect(self, client: Nats) -> None:
        await client.connect(
            self._servers,
            user=self._user,
            password=self._password,
            token=self._token,
            user_credentials=self._creds_file,
            connect_timeout=max(1, round(self._timeout_s)),
            allow_reconnect=False,
            # Each server is tried twice, at once; then delivery's backoff takes over.
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            error_cb=self._error,
            name=f"cdpd-{self.name}",
        )
        if self._create_stream is not None:
            await self._ensure_stream(client, self._create_stream)

    async def _ensure_stream(self, client: Nats, stream: str) -> None:
        js = client.jetstream(timeout=self._timeout_s)
        try:
            await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(name=stream, subjects=self._stream_subjects)

    async def _error(self, error: Exception) -> None:
        """nats-py would log its errors itself; the last is kept for the attempt's error."""
        self._last_error = error

    async def send(self, session: aiohttp.ClientSession, items: Sequence[Prepared]) -> list[Result]:
        client = None
        try:
            client = await self._connection.get()
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            return [brokers.failed(exc, "NATS")] * len(items)
        js = client.jetstream(timeout=self._timeout_s)
        results = list(await asyncio.gather(*(self._publish(js, item) for item in items)))
        if any(r.status is None and not r.invalid for r in results):
            await self._connection.lost(client)
        return results

    async def _publish(self, js: nats.js.JetStreamContext, item: Prepared) -> Result:
        subject, problem = self._names.render(item, brokers.message_of(item))
        if subject is None:
            return Result(None, problem, invalid=True)
        problem = header_problem("messageId", item.delivery.message_id)
        if problem:  # stored before ingest refused such ids
            return Result(None, problem, invalid=True)
        body = mapped_json(item, "payload")
        headers = {"Nats-Msg-Id": item.delivery.message_id}
        try:
            await js.publish(subject, body, headers=headers)
        except nats.js.errors.NoStreamResponseError:
            return Result(
                UNAVAILABLE,
                f"NATS: no JetStream stream takes subject {subject!r} (create one whose subjects"
                " match it, or set create_stream)",
            )
        except nats.js.errors.APIError as exc:
            status = UNAVAILABLE if (exc.code or 0) >= 500 else REFUSED
            text = f"NATS: JetStream error {exc.code} ({exc.err_code}): {exc.description}"
            return Result(status, text[:MAX_ERROR_CHARS])
        except nats.errors.MaxPayloadError as exc:
            return Result(REFUSED, brokers.problem(exc, "NATS"))
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            return brokers.failed(exc, "NATS")
        return Result(ACCEPTED)

    async def close(self) -> None:
        await self._connection.close()


def _check_stream(destination: str, name: str, subjects: list[str]) -> None:
    where = f"destination {destination!r}: create_stream {name!r}"
    if not name.isidentifier():
        raise ConfigError(f"{where}: a stream name is letters, digits and _")
    for subject in subjects:
        tokens = subject.split(".")
        wild = [t for t in tokens if t not in ("*", ">") and ("*" in t or ">" in t)]
        if wild or "" in tokens or ">" in tokens[:-1] or any(c.isspace() for c in subject):
            raise ConfigError(
                f"{where}: its subject {subject!r} is not a valid filter (a slot inside a token"
                " gives one; set stream_subjects)"
            )


def _alive(client: Nats) -> bool:
    return not (client.is_closed or client.is_reconnecting)


async def _close(client: Nats) -> None:
    await client.close()
