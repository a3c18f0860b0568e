"""From a config entry's `type` to the destination that serves it: its catalog name, action
kinds and presets, and how to build it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from cdpd.destinations import actions, customerio, ga4, slack, webhook
from cdpd.destinations.base import Destination as Sender
from cdpd.destinations.settings import (
    CustomerIoDestination,
    Destination,
    Ga4Destination,
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
        name="ga4",
        catalog_name="Google Analytics 4",
        description="Events to GA4's Measurement Protocol, checked against its rules first",
        settings=Ga4Destination,
        kinds=ga4.KINDS,
        presets=ga4.PRESETS,
        make=ga4.Ga4,
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
