"""From a config entry's `type` to the destination that serves it: its catalog name, action
kinds and presets, and how to build it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from cdpd.destinations import (
    actions,
    mqtt,
    nats_jetstream,
    rabbitmq,
    redis_streams,
    webhook,
)
from cdpd.destinations.base import Destination as Sender
from cdpd.destinations.settings import (
    Destination,
    MqttDestination,
    NatsDestination,
    RabbitMQDestination,
    RedisDestination,
    WebhookDestination,
)
from cdpd.settings import ConfigError


class DestinationType(msgspec.Struct, frozen=True):
    name: str  # the config's `type`
    catalog_name: str  # the name Segment's integrations object uses for this kind of tool
    description: str
    settings: type[Destination]
    kinds: dict[str, actions.ActionKind]
    presets: tuple[actions.Preset, ...]
    make: Callable[[Any, list[actions.Action]], Sender]


TYPES: tuple[DestinationType, ...] = (
    DestinationType(
        name="webhook",
        catalog_name="Webhooks",
        description="POST each message (or mapped fields) as JSON to a URL, optionally signed",
        settings=WebhookDestination,
        kinds=webhook.KINDS,
        presets=webhook.PRESETS,
        make=webhook.Webhook,
    ),
    DestinationType(
        name="redis",
        catalog_name="Redis",
        description="XADD each message (or mapped fields) to a Redis stream, pipelined per batch",
        settings=RedisDestination,
        kinds=redis_streams.KINDS,
        presets=redis_streams.PRESETS,
        make=redis_streams.RedisStreams,
    ),
    DestinationType(
        name="nats",
        catalog_name="NATS",
        description="Publish each message (or mapped fields) to NATS JetStream, deduplicated by"
        " messageId, confirmed by PubAck",
        settings=NatsDestination,
        kinds=nats_jetstream.KINDS,
        presets=nats_jetstream.PRESETS,
        make=nats_jetstream.NatsJetStream,
    ),
    DestinationType(
        name="rabbitmq",
        catalog_name="RabbitMQ",
        description="Publish each message (or mapped fields) to a RabbitMQ exchange as a"
        " persistent message, with publisher confirms",
        settings=RabbitMQDestination,
        kinds=rabbitmq.KINDS,
        presets=rabbitmq.PRESETS,
        make=rabbitmq.RabbitMQ,
    ),
    DestinationType(
        name="mqtt",
        catalog_name="MQTT",
        description="Publish each message (or mapped fields) to an MQTT broker at QoS 1,"
        " confirmed by PUBACK",
        settings=MqttDestination,
        kinds=mqtt.KINDS,
        presets=mqtt.PRESETS,
        make=mqtt.Mqtt,
    ),
)
_BY_SETTINGS = {t.settings: t for t in TYPES}


def type_of(config: Destination) -> DestinationType:
    try:
        return _BY_SETTINGS[type(config)]
    except KeyError:
        raise ConfigError(f"destination {config.name!r}: no implementation for its type") from None


def actions_of(config: Destination) -> list[actions.Action]:
    """Its configured actions (or presets), checked; ConfigError says which and where."""
    kind = type_of(config)
    return actions.build(config, kind.kinds, kind.presets)


def build(config: Destination) -> Sender:
    """The destination, ready to send (credentials resolved)."""
    return type_of(config).make(config, actions_of(config))


def catalog_name(config: Destination) -> str:
    return type_of(config).catalog_name


def catalog() -> Sequence[DestinationType]:
    return TYPES
