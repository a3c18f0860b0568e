"""The RabbitMQ destination: each item is published to an exchange with the routing key its
template names, as a persistent message (`delivery_mode` 2) whose `message_id` is the
messageId and whose `content_type` is `application/json`, on a channel with publisher
confirms: it is delivered once the broker acks it. With `mandatory` (the default) a message no
queue takes comes back, and is a failure that says so.

One connection and one channel are opened on first use and held; a connection or channel that
fails is closed, and the next send opens new ones (and declares the exchange again). The
password, in the URL or from `password`/`password_env`, is never logged nor put in an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import aio_pika
import aio_pika.abc
import aiohttp
import aiormq.exceptions
from yarl import URL

from cdpd.destinations import brokers
from cdpd.destinations.actions import Action, Prepared, mapped_json
from cdpd.destinations.base import Result, secret
from cdpd.destinations.brokers import ACCEPTED, REFUSED, UNAVAILABLE
from cdpd.destinations.settings import RabbitMQDestination

KINDS = brokers.publish_kind("routing_key", "routing key")
PRESETS = brokers.PRESETS
MAX_ROUTING_KEY_BYTES = 255  # AMQP 0-9-1's shortstr


def check_routing_key(key: str) -> str | None:
    """Routing keys: `.`-separated words, none empty, no `*` or `#`, no spaces, 255 bytes."""
    return brokers.check_tokens(key, ".", "*#", MAX_ROUTING_KEY_BYTES, empty_ok=True)


@dataclass
class _Link:
    connection: aio_pika.abc.AbstractConnection
    channel: aio_pika.abc.AbstractChannel
    exchange: aio_pika.abc.AbstractExchange


class RabbitMQ:
    def __init__(self, config: RabbitMQDestination, actions: list[Action]) -> None:
        self.name = config.name
        self.actions = actions
        url = URL(config.url)
        password = secret(config.name, config.password, config.password_env, "password")
        self._url = url.with_password(password) if password else url
        self._where = str(url.with_password(None).with_user(None))  # for errors
        self._exchange = config.exchange
        self._exchange_type = aio_pika.ExchangeType(config.exchange_type)
        self._passive = config.exchange_declare == "passive"
        self._mandatory = config.mandatory
        self._timeout_s = config.timeout_s
        self._names = brokers.Names(
            config.name, "routing_key", config.routing_key, actions, check_routing_key
        )
        self._connection = brokers.Connection(self._open, _close, alive=_alive)

    async def _open(self) -> _Link:
        connection = await aio_pika.connect(
            self._url, timeout=self._timeout_s, client_properties={"connection_name": self.name}
        )
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = (
                channel.default_exchange
                if self._exchange == ""
                else await channel.declare_exchange(
                    self._exchange, self._exchange_type, durable=True, passive=self._passive
                )
            )
        except BaseException:
            await connection.close()
            raise
        return _Link(connection, channel, exchange)

    async def send(self, session: aiohttp.ClientSession, items: Sequence[Prepared]) -> list[Result]:
        link = None
        try:
            link = await self._connection.get()
        except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as exc:
            await self._connection.lost(link)
            return [brokers.failed(exc, f"RabbitMQ at {self._where}")] * len(items)
        results = list(await asyncio.gather(*(self._publish(link, item) for item in items)))
        if any(r.status is None and not r.invalid for r in results):
            await self._connection.lost(link)
        return results

    async def _publish(self, link: _Link, item: Prepared) -> Result:
        key, problem = self._names.render(item, brokers.message_of(item))
        if key is None:
            return Result(None, problem, invalid=True)
        message = aio_pika.Message(
            mapped_json(item, "payload"),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=item.delivery.message_id,
        )
        try:
            await link.exchange.publish(
                message, key, mandatory=self._mandatory, timeout=self._timeout_s
            )
        except aiormq.exceptions.PublishError as exc:
            text = exc.args[0] if exc.args else "returned"  # the broker's reply text
            return Result(
                REFUSED,
                f"RabbitMQ: unroutable: exchange {self._exchange!r} has no queue bound for"
                f" routing key {key!r} ({text})",
            )
        except aiormq.exceptions.DeliveryError:
            return Result(
                UNAVAILABLE,
                f"RabbitMQ: the broker nacked the message (exchange {self._exchange!r}, routing"
                f" key {key!r}): a queue refused it or the broker failed to store it",
            )
        except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError) as exc:
            return brokers.failed(exc, f"RabbitMQ at {self._where}")
        except (OSError, TimeoutError, RuntimeError) as exc:
            return brokers.failed(exc, f"RabbitMQ at {self._where}")
        return Result(ACCEPTED)

    async def close(self) -> None:
        await self._connection.close()


def _alive(link: _Link) -> bool:
    return not (link.connection.is_closed or link.channel.is_closed)


async def _close(link: _Link) -> None:
    await link.connection.close()
