"""From a config entry's `type` to the destination that serves it: its catalog name, action
kinds and presets, and how to build it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from cdpd.clock import Clock, SystemClock
from cdpd.destinations import (
    actions,
    amplitude,
    customerio,
    file,
    ga4,
    mixpanel,
    mqtt,
    nats_jetstream,
    rabbitmq,
    redis_streams,
    slack,
    webhook,
)
from cdpd.destinations.base import Destination as Sender
from cdpd.destinations.settings import (
    AmplitudeDestination,
    CustomerIoDestination,
    Destination,
    FileDestination,
    Ga4Destination,
    MixpanelDestination,
    MqttDestination,
    NatsDestination,
    RabbitMQDestination,
    RedisDestination,
    SlackDestination,
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
    # Called as make(config, actions), or make(config, actions, clock) when `clocked` (the
    # delivery clock, for a destination that keeps time of its own, so tests can move it).
    make: Callable[..., Sender]
    clocked: bool = False


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
        name="mixpanel",
        catalog_name="Mixpanel",
        description="Events to Mixpanel's /import (strict), profiles to /engage, groups to "
        "/groups, as Segment's Mixpanel (Actions) presets send them",
        settings=MixpanelDestination,
        kinds=mixpanel.KINDS,
        presets=mixpanel.PRESETS,
        make=mixpanel.Mixpanel,
    ),
    DestinationType(
        name="amplitude",
        catalog_name="Amplitude",
        description="Events to Amplitude's HTTP V2 API and identifications to its Identify API, "
        "as Segment's Amplitude (Actions) presets send them",
        settings=AmplitudeDestination,
        kinds=amplitude.KINDS,
        presets=amplitude.PRESETS,
        make=amplitude.Amplitude,
        clocked=True,
    ),
    DestinationType(
        name="slack",
        catalog_name="Slack",
        description="Post a message per event to a Slack incoming webhook",
        settings=SlackDestination,
        kinds=slack.KINDS,
        presets=slack.PRESETS,
        make=slack.Slack,
    ),
    DestinationType(
        name="customerio",
        catalog_name="Customer.io",
        description="People, events, page and screen views and objects to Customer.io's Track API",
        settings=CustomerIoDestination,
        kinds=customerio.KINDS,
        presets=customerio.PRESETS,
        make=customerio.CustomerIo,
    ),
    DestinationType(
        name="file",
        catalog_name="File",
        description="Write each message (or mapped fields) as a line of JSON to a local file, "
        "rotated by size and age and gzipped",
        settings=FileDestination,
        kinds=file.KINDS,
        presets=file.PRESETS,
        make=file.File,
        clocked=True,
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
    DestinationType(
        name="ga4",
        catalog_name="Google Analytics 4",
        description="Events to GA4's Measurement Protocol, checked against its rules first",
        settings=Ga4Destination,
        kinds=ga4.KINDS,
        presets=ga4.PRESETS,
        make=ga4.Ga4,
        clocked=True,
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


def build(config: Destination, clock: Clock | None = None) -> Sender:
    """The destination, ready to send (credentials resolved)."""
    kind = type_of(config)
    if kind.clocked:
        return kind.make(config, actions_of(config), clock or SystemClock())
    return kind.make(config, actions_of(config))


def catalog_name(config: Destination) -> str:
    return type_of(config).catalog_name


def catalog() -> Sequence[DestinationType]:
    return TYPES
