"""The settings of destinations: those every destination takes, and each type's own. Each type
is a tagged Struct (its `type`); `Destination` is their union."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from cdpd.settings import (
    MessageType,
    Name,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Section,
)


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


class MixpanelDestination(
    _Destination, tag="mixpanel", frozen=True, forbid_unknown_fields=True, kw_only=True
):
    """Mixpanel's ingestion API. Events go to `/import` (Basic auth: a service account with
    `project_id`, else the project secret, else the project token); profiles to `/engage`,
    groups to `/groups`, `$identify` and `$create_alias` to `/track`, with the token."""

    project_token: str | None = None
    project_token_env: str | None = None
    api_secret: str | None = None
    api_secret_env: str | None = None
    service_account_username: str | None = None
    service_account_secret: str | None = None
    service_account_secret_env: str | None = None
    project_id: str | None = None
    # https://api-eu.mixpanel.com (EU residency), https://api-in.mixpanel.com (India).
    api_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")] = "https://api.mixpanel.com"
    # Regulations: the GDPR API's OAuth token (else the service account), and where it is
    # (EU residency: https://eu.mixpanel.com/api/app/data-deletions/v3.0/).
    gdpr_token: str | None = None
    gdpr_token_env: str | None = None
    deletion_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")] = (
        "https://mixpanel.com/api/app/data-deletions/v3.0/"
    )
    # /import?strict=1: Mixpanel validates each event and names the ones it rejects.
    strict: bool = True
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=2000)] = 500


class AmplitudeDestination(
    _Destination, tag="amplitude", frozen=True, forbid_unknown_fields=True, kw_only=True
):
    """Amplitude's HTTP V2 API for events, its Identify API for user properties."""

    api_key: str | None = None
    api_key_env: str | None = None
    # EU residency: https://api.eu.amplitude.com/2/httpapi and .../identify.
    api_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")] = (
        "https://api2.amplitude.com/2/httpapi"
    )
    identify_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")] = (
        "https://api2.amplitude.com/identify"
    )
    # Regulations: the user deletion API takes the API key with the secret key (Basic auth).
    # EU residency: https://analytics.eu.amplitude.com/api/2/deletions/users.
    secret_key: str | None = None
    secret_key_env: str | None = None
    deletion_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")] = (
        "https://amplitude.com/api/2/deletions/users"
    )
    # Amplitude rejects user and device ids shorter than this (its default: 5).
    min_id_length: Annotated[int, msgspec.Meta(ge=1)] | None = None
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=2000)] = 500


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


class FileDestination(
    _Destination, tag="file", frozen=True, forbid_unknown_fields=True, kw_only=True
):
    """Newline-delimited JSON in a local file, rotated by size and age, gzipped on rotation."""

    # The file written to; its directory is made if missing. A relative path is taken from
    # the working directory, as data_dir is.
    path: Annotated[str, msgspec.Meta(min_length=1)]
    max_bytes: NonNegativeInt = 100 * 1024 * 1024  # rotate before it grows past; 0: never
    rotate_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 3600.0  # 0: never by age
    keep: PositiveInt | None = None  # rotated files kept (the newest); None: all
    # "batch": fsync before a batch counts as delivered (it survives power loss); "none": the
    # kernel writes it back when it likes (it survives cdpd's crash, not the machine's).
    fsync: Literal["batch", "none"] = "batch"
    # One writer: lines follow the outbox's order.
    concurrency: PositiveInt = 1
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100


class RedisDestination(
    _Destination, tag="redis", frozen=True, forbid_unknown_fields=True, kw_only=True
):
    """XADD to a Redis stream; see docs/destinations/redis.md."""

    # redis://[user@]host:port/db or rediss:// (TLS); or url_env naming a variable holding it
    # (a password in the URL then stays out of the config file). Neither: redis://127.0.0.1:6379/0
    url: Annotated[str, msgspec.Meta(pattern=r"^(redis|rediss|unix)://")] | None = None
    url_env: str | None = None
    password: str | None = None
    password_env: str | None = None
    stream: str = "cdpd"  # a {{path}} template, e.g. "cdpd:{{type}}"
    maxlen: PositiveInt | None = None  # XADD MAXLEN ~ maxlen
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class NatsDestination(
    _Destination, tag="nats", frozen=True, forbid_unknown_fields=True, kw_only=True
):
    """Publish to NATS JetStream; see docs/destinations/nats.md."""

    servers: list[Annotated[str, msgspec.Meta(pattern=r"^(nats|tls)://")]] = msgspec.field(
        default_factory=lambda: ["nats://127.0.0.1:4222"]
    )
    user: str | None = None
    password: str | None = None
    password_env: str | None = None
    token: str | None = None
    token_env: str | None = None
    creds_file: str | None = None  # a .creds file (JWT and NKey seed)
    subject: str = "cdpd.{{type}}"  # a {{path}} template
    create_stream: str | None = None  # a stream to create when missing (off by default)
    stream_subjects: list[str] = msgspec.field(default_factory=list)  # its subjects
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class RabbitMQDestination(
    _Destination, tag="rabbitmq", frozen=True, forbid_unknown_fields=True, kw_only=True
):
    """Publish to a RabbitMQ exchange with publisher confirms; see docs/destinations/rabbitmq.md."""

    url: Annotated[str, msgspec.Meta(pattern=r"^amqps?://")] = "amqp://guest@127.0.0.1:5672/"
    password: str | None = None
    password_env: str | None = None
    exchange: str = "cdpd"  # "" is the default exchange (the routing key names a queue)
    exchange_type: Literal["topic", "direct", "fanout", "headers"] = "topic"
    # "declare": declare it durable (an error if it exists with other options); "passive": it
    # must exist already.
    exchange_declare: Literal["declare", "passive"] = "declare"
    routing_key: str = "{{type}}"  # a {{path}} template
    mandatory: bool = True  # a message no queue takes is returned: a failure
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class MqttDestination(
    _Destination, tag="mqtt", frozen=True, forbid_unknown_fields=True, kw_only=True
):
    """Publish to an MQTT broker at QoS 1; see docs/destinations/mqtt.md."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1883
    username: str | None = None
    password: str | None = None
    password_env: str | None = None
    tls: bool = False
    tls_ca_file: str | None = None  # the CA bundle to trust (default: the system's)
    client_id: str | None = None  # default: "cdpd-<destination name>"
    topic: str = "cdpd/{{type}}"  # a {{path}} template
    qos: Literal[1, 2] = 1
    retain: bool = False
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


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


Destination = (
    WebhookDestination
    | MixpanelDestination
    | AmplitudeDestination
    | SlackDestination
    | CustomerIoDestination
    | FileDestination
    | RedisDestination
    | NatsDestination
    | RabbitMQDestination
    | MqttDestination
    | Ga4Destination
)
