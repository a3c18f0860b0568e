"""The MQTT destination: each item is published to the topic its template names, at QoS 1 (or
2) with `retain` off unless set, and is delivered once the broker's PUBACK (PUBCOMP at QoS 2)
arrives. One client (MQTT 3.1.1, client id `cdpd-<destination name>` by default) is connected on
first use and held; a client that fails or is disconnected is thrown away, and the next send
connects a new one. The password is never logged nor put in an error.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence

import aiohttp
import aiomqtt

from cdpd.destinations import brokers
from cdpd.destinations.actions import Action, Prepared, mapped_json
from cdpd.destinations.base import Result, secret
from cdpd.destinations.brokers import ACCEPTED
from cdpd.destinations.settings import MqttDestination

KINDS = brokers.publish_kind("topic", "topic")
PRESETS = brokers.PRESETS
MAX_TOPIC_BYTES = 65535
# aiomqtt warns at every publish beyond its tenth in flight, which a batch always is; the
# outcome of each publish is recorded anyway, so only its errors are let through.
_CLIENT_LOG = logging.getLogger("cdpd.destinations.mqtt.client")
_CLIENT_LOG.setLevel(logging.ERROR)


def check_topic(topic: str) -> str | None:
    """Topics: `/`-separated levels, none empty, no `+` or `#`, no spaces, not `$`-reserved."""
    if topic.startswith("$"):
        return "starts with $ (topics reserved for the broker)"
    return brokers.check_tokens(topic, "/", "+#", MAX_TOPIC_BYTES)


class Mqtt:
    def __init__(self, config: MqttDestination, actions: list[Action]) -> None:
        self.name = config.name
        self.actions = actions
        self._host = config.host
        self._port = config.port
        self._username = config.username
        self._password = secret(config.name, config.password, config.password_env, "password")
        self._tls = ssl.create_default_context(cafile=config.tls_ca_file) if config.tls else None
        self._client_id = config.client_id or f"cdpd-{config.name}"
        self._qos = config.qos
        self._retain = config.retain
        self._timeout_s = config.timeout_s
        self._names = brokers.Names(config.name, "topic", config.topic, actions, check_topic)
        self._where = f"MQTT at {config.host}:{config.port}"
        self._connection = brokers.Connection(self._open, _close, alive=_alive)

    async def _open(self) -> aiomqtt.Client:
        client = aiomqtt.Client(
            self._host,
            self._port,
            username=self._username,
            password=self._password,
            identifier=self._client_id,
            tls_context=self._tls,
            timeout=self._timeout_s,
            logger=_CLIENT_LOG,
        )
        await client.__aenter__()
        return client

    async def send(self, session: aiohttp.ClientSession, items: Sequence[Prepared]) -> list[Result]:
        client = None
        try:
            client = await self._connection.get()
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            return [brokers.failed(exc, self._where)] * len(items)
        results = list(await asyncio.gather(*(self._publish(client, item) for item in items)))
        if any(r.status is None and not r.invalid for r in results):
            await self._connection.lost(client)
        return results

    async def _publish(self, client: aiomqtt.Client, item: Prepared) -> Result:
        topic, problem = self._names.render(item, brokers.message_of(item))
        if topic is None:
            return Result(None, problem, invalid=True)
        body = mapped_json(item, "payload")
        try:
            await client.publish(topic, body, qos=self._qos, retain=self._retain)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            return brokers.failed(exc, self._where)
        return Result(ACCEPTED)

    async def close(self) -> None:
        await self._connection.close()


def _alive(client: aiomqtt.Client) -> bool:
    disconnected: asyncio.Future[None] | None = getattr(client, "_disconnected", None)
    return disconnected is None or not disconnected.done()


async def _close(client: aiomqtt.Client) -> None:
    await client.__aexit__(None, None, None)
