"""The settings of destinations: those every destination takes, and each type's own. Each type
is a tagged Struct (its `type`); `Destination` is their union."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from cdpd.settings import MessageType, Name, PositiveFloat, PositiveInt, Section


class RetryConfig(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """When to try a failed delivery again, and when to give up (see delivery/policy.py)."""

    retry_window_s: PositiveFloat = 4 * 3600.0
    min_attempts: PositiveInt = 3
    backoff_min_s: PositiveFloat = 10.0
    backoff_max_s: PositiveFloat = 300.0
    backoff_factor: Annotated[float, msgspec.Meta(ge=1.0)] = 2.0


class ActionConfig(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One action of a destination: which messages it takes (an FQL subscription) and the
    fields it sends (a mapping over the action kind's defaults)."""

    name: Name
    kind: str | None = None  # needed when the destination type has more than one kind
    subscribe: str
    mapping: dict[str, Any] = msgspec.field(default_factory=dict)
    enabled: bool = True


class _Destination(
    Section, tag_field="type", frozen=True, forbid_unknown_fields=True, kw_only=True
):
    name: Name
    enabled: bool = True
    # Sources whose messages this destination receives; None means every source.
    sources: list[str] | None = None
    # Message types it receives (None: all); track event names it receives or skips.
    types: list[MessageType] | None = None
    events: list[str] | None = None
    exclude_events: list[str] = msgspec.field(default_factory=list)
    # "user": a user's later messages wait while an earlier one is undelivered.
    ordering: Literal["none", "user"] = "none"
    concurrency: PositiveInt = 8
    rate_limit_per_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # requests; 0 = unlimited
    batch_size: PositiveInt = 1
    timeout_s: PositiveFloat = 10.0
    # Overrides [delivery.retry] for this destination.
    retry: RetryConfig | None = None
    # None: the destination type's presets, which behave like Segment's defaults.
    actions: list[ActionConfig] | None = None


class WebhookDestination(
    _Destination, tag="webhook", frozen=True, forbid_unknown_fields=True, kw_only=True
):
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    # Shared secret for the HMAC-SHA256 signature, or the environment variable holding it.
    secret: str | None = None
    secret_env: str | None = None
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1


_HTTP_URL = msgspec.Meta(pattern=r"^https?://")


class SlackDestination(
    _Destination, tag="slack", frozen=True, forbid_unknown_fields=True, kw_only=True
):
    # The incoming webhook's URL is its credential: give it here or name the variable holding it.
    webhook_url: Annotated[str, _HTTP_URL] | None = None
    webhook_url_env: str | None = None
    # Slack takes about one message a second per webhook; one at a time keeps their order.
    rate_limit_per_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    concurrency: PositiveInt = 1
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1)] = 1


class CustomerIoDestination(
    _Destination, tag="customerio", frozen=True, forbid_unknown_fields=True, kw_only=True
):
    site_id: str | None = None
    site_id_env: str | None = None
    api_key: str | None = None
    api_key_env: str | None = None
    # EU workspaces: https://track-eu.customer.io
    api_url: Annotated[str, _HTTP_URL] = "https://track.customer.io"
    # One request per message; a batch of deliveries goes out as parallel requests.
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1


class Ga4Destination(
    _Destination, tag="ga4", frozen=True, forbid_unknown_fields=True, kw_only=True
):
    measurement_id: Annotated[str, msgspec.Meta(min_length=1)]
    api_secret: str | None = None
    api_secret_env: str | None = None
    api_url: Annotated[str, _HTTP_URL] = "https://www.google-analytics.com/mp/collect"
    # Check each request with the validation server first and send only what it accepts.
    validate: bool = False
    # Deliveries per attempt; a request holds one client's events, at most 25 of them.
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=500)] = 25


Destination = WebhookDestination | SlackDestination | CustomerIoDestination | Ga4Destination
