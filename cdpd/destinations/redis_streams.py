"""The Redis Streams destination: each item is one `XADD` to the stream its template names,
with the fields `message` (the JSON), `messageId` and `type`, and `MAXLEN ~ maxlen` when a cap
is set; a batch goes as one pipeline (no transaction), and each entry has its own result.

The connection is redis-py's asyncio client, made on first use; redis-py reconnects by itself,
and a failed send throws the client away so the next one starts afresh. redis-py's own retries
are off: delivery retries, with its backoff. A password comes from `password`/`password_env`
or from the URL in `url_env`; neither is logged nor put in an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from cdpd.destinations import brokers
from cdpd.destinations.actions import Action, Prepared, mapped_json
from cdpd.destinations.base import Result, secret
from cdpd.destinations.brokers import ACCEPTED, REFUSED, UNAVAILABLE
from cdpd.destinations.settings import RedisDestination

KINDS = brokers.publish_kind("stream", "stream key")
PRESETS = brokers.PRESETS
MAX_KEY_BYTES = 1024
DEFAULT_URL = "redis://127.0.0.1:6379/0"
# Errors that say the server cannot take writes now, rather than that this entry is wrong.
_TRANSIENT = ("OOM", "LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN")


def check_key(key: str) -> str | None:
    """Stream keys: no spaces, wildcards or empty `:` levels, at most 1 KiB."""
    return brokers.check_tokens(key, ":", "*?[]", MAX_KEY_BYTES)


class RedisStreams:
    def __init__(self, config: RedisDestination, actions: list[Action]) -> None:
        self.name = config.name
        self.actions = actions
        url = secret(config.name, config.url, config.url_env, "url")
        self._url = url or DEFAULT_URL
        self._password = secret(config.name, config.password, config.password_env, "password")
        self._timeout_s = config.timeout_s
        self._maxlen = config.maxlen
        self._names = brokers.Names(config.name, "stream", config.stream, actions, check_key)
        self._connection = brokers.Connection(self._open, _close)

    async def _open(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self._url,
            password=self._password,
            socket_timeout=self._timeout_s,
            socket_connect_timeout=self._timeout_s,
            retry=Retry(NoBackoff(), 0),
            client_name=f"cdpd-{self.name}",
        )

    async def send(self, session: aiohttp.ClientSession, items: Sequence[Prepared]) -> list[Result]:
        results: list[Result | None] = [None] * len(items)
        entries: list[tuple[int, str, dict[str, bytes | str]]] = []
        for index, item in enumerate(items):
            message = brokers.message_of(item)
            key, problem = self._names.render(item, message)
            if key is None:
                results[index] = Result(None, problem, invalid=True)
                continue
            fields: dict[str, bytes | str] = {
                "message": mapped_json(item, "payload"),
                "messageId": item.delivery.message_id,
                "type": str(message.get("type", "")),
            }
            entries.append((index, key, fields))
        if entries:
            for (index, _, _), result in zip(entries, await self._add(entries), strict=True):
                results[index] = result
        return [r if r is not None else Result(None, "not sent") for r in results]

    async def _add(self, entries: list[tuple[int, str, dict[str, bytes | str]]]) -> list[Result]:
        client = None
        try:
            client = await self._connection.get()
            pipe = client.pipeline(transaction=False)
            for _, key, fields in entries:
                pipe.xadd(key, fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
            answers = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as exc:
            await self._connection.lost(client)
            return [brokers.failed(exc, "Redis")] * len(entries)
        return [_result(answer) for answer in answers]

    async def close(self) -> None:
        await self._connection.close()


def _result(answer: object) -> Result:
    if isinstance(answer, ResponseError):
        text = brokers.problem(answer, "Redis")
        transient = str(answer).startswith(_TRANSIENT)
        return Result(UNAVAILABLE if transient else REFUSED, text)
    if isinstance(answer, Exception):
        return brokers.failed(answer, "Redis")
    return Result(ACCEPTED)


async def _close(client: aioredis.Redis) -> None:
    await client.aclose()
