"""From a config entry's `type` to the destination that serves it."""

from __future__ import annotations

import os

from cdpd.config import ConfigError, Destination, WebhookDestination
from cdpd.destinations.base import Destination as Sender
from cdpd.destinations.webhook import Webhook


def build(config: Destination) -> Sender:
    if isinstance(config, WebhookDestination):
        return Webhook(config, secret=_secret(config))
    raise ConfigError(f"destination {config.name!r}: no implementation for its type")


def catalog_name(config: Destination) -> str:
    """The name Segment's integrations object uses for this kind of destination."""
    if isinstance(config, WebhookDestination):
        return Webhook.catalog_name
    raise ConfigError(f"destination {config.name!r}: no implementation for its type")


def _secret(config: WebhookDestination) -> str | None:
    if config.secret:
        return config.secret
    if config.secret_env:
        value = os.environ.get(config.secret_env)
        if not value:
            raise ConfigError(
                f"destination {config.name!r}: secret_env names {config.secret_env}, "
                "which is not set in the environment"
            )
        return value
    return None
