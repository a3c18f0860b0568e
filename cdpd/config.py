"""The configuration file: frozen msgspec Structs and `load(path)` with errors that name the key."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import msgspec.inspect

from cdpd import confd
from cdpd.destinations.settings import Destination, FileDestination, RetryConfig
from cdpd.engage.settings import AudienceConfig, ComputedTraitConfig, EngageConfig
from cdpd.privacy.settings import PrivacyConfig
from cdpd.settings import (
    NAME_PATTERN,
    NAME_RULE,
    ConfigError,
    Name,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Section,
    env_secret,
)

DEFAULT_CONFIG_PATH = "/etc/cdpd/cdpd.toml"

__all__ = ["ConfigError", "Destination"]  # what most readers of a config need


class ServerConfig(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    listen: str = "127.0.0.1:8088"
    # Base URL that browsers reach this daemon at; the analytics.js settings document points there.
    public_url: str | None = None
    max_request_bytes: PositiveInt = 512_000
    # /v1/batch and /v1/import: RudderStack's SDKs fill a batch to 4 MiB, then add one more
    # message (up to max_event_bytes): room for that.
    max_batch_request_bytes: PositiveInt = 4 * 1024 * 1024 + 64 * 1024
    max_event_bytes: PositiveInt = 32 * 1024
    max_batch_events: PositiveInt = 2500
    # Rejected messages of one request kept one by one in `rejects`; the rest of that request's
    # rejections are one summary row (reason_code "more_rejected") counting them by reason.
    max_rejects_per_request: PositiveInt = 100
    # Take the client address for context.ip from X-Forwarded-For (only behind a trusted proxy).
    trust_forwarded_for: bool = False
    shutdown_timeout_s: PositiveFloat = 30.0
    # Client limits (see cdpd/connections.py): open connections; a request head's total size,
    # header count and time from its first byte to its end; the body's time; idle keep-alive.
    max_connections: PositiveInt = 2000
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 32 * 1024
    max_headers: PositiveInt = 100
    header_timeout_s: PositiveFloat = 10.0
    body_timeout_s: PositiveFloat = 60.0
    keepalive_timeout_s: PositiveFloat = 15.0
    cors_max_age_s: NonNegativeInt = 900

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


class JetStreamConfig(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The NATS JetStream cluster that `backend = "jetstream"` keeps messages in (docs/scaling.md).
    Every node runs with the same values."""

    servers: list[str] = msgspec.field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    user: str | None = None
    # Secrets are named, never written here: an environment variable or a systemd credential.
    password_env: str | None = None
    token_env: str | None = None
    creds_file: str | None = None  # a NATS .creds file (JWT and NKey seed)
    # The stream holding accepted messages; the other streams and buckets are named after it.
    stream: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")] = "CDPD"
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 3
    # Messages are published on one of this many subjects, by user: what `ordering = "user"`
    # keeps in order across nodes. Fixed once the stream exists.
    partitions: Annotated[int, msgspec.Meta(ge=1, le=256)] = 16
    max_age_s: PositiveInt = 30 * 24 * 3600
    connect_timeout_s: PositiveFloat = 5.0
    # A request waits this long for JetStream's acks before it is answered 503 (Retry-After).
    ack_timeout_s: PositiveFloat = 5.0
    # How long a delivery consumer waits for a node's verdict on a message before another node
    # gets it (a node that died); at least twice a destination's timeout_s is used.
    ack_wait_s: PositiveFloat = 60.0
    # How often the node holding the profiles lease stores a snapshot of the identity and
    # Engage files in the cluster (what a node taking over restores, and what the other nodes
    # answer the Profile API from).
    snapshot_interval_s: PositiveFloat = 30.0
    # A regulation's file target waits for every node that writes the file to erase its own,
    # those down included, but not for one unseen this long (it left the cluster for good);
    # far above the nodes' 5 s heartbeat.
    node_gone_s: Annotated[float, msgspec.Meta(ge=60.0)] = 7 * 24 * 3600.0

    def password(self) -> str | None:
        return env_secret(self.password_env) if self.password_env else None

    def token(self) -> str | None:
        return env_secret(self.token_env) if self.token_env else None


class StorageConfig(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # "sqlite": the outbox is a SQLite file in data_dir (one node). "jetstream": accepted messages
    # live in a NATS JetStream cluster shared by every cdpd node (docs/scaling.md).
    backend: Literal["sqlite", "jetstream"] = "sqlite"
    jetstream: JetStreamConfig = msgspec.field(default_factory=JetStreamConfig)
    data_dir: str = "./var"
    # "normal": an acknowledged message survives a crash of the process (kill -9).
    # "full": it also survives power loss, at the cost of one fsync per group commit.
    synchronous: Literal["normal", "full"] = "normal"
    # 0 means the outbox may grow until the disk's free-space floor is reached.
    max_outbox_bytes: NonNegativeInt = 0
    min_free_disk_bytes: NonNegativeInt = 256 * 1024 * 1024
    dedup_window_s: NonNegativeInt = 24 * 3600
    # "source": a messageId is a duplicate only of one stored by the same source, so no source
    # (a public browser write key) can suppress another's messages by guessing their ids.
    # "global": of one stored by any source, as Segment deduplicates.
    dedup_scope: Literal["source", "global"] = "source"
    commit_max_rows: PositiveInt = 1000
    # How long to answer 503 after the outbox was found full before trying to write again.
    full_retry_after_s: PositiveInt = 5

    @property
    def outbox_path(self) -> Path:
        return Path(self.data_dir) / "outbox.sqlite3"


class LoggingConfig(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # true: a line per request; "errors": only for answers that are not 2xx; false: none.
    access_log: bool | Literal["errors"] = True


class TrackProtocols(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Segment's track enforcement settings, under Segment's names; all allow by default."""

    allowUnplannedEvents: bool = True
    allowUnplannedEventProperties: bool = True
    allowEventOnViolations: bool = True
    allowPropertiesOnViolations: bool = True
    commonEventOnViolations: Literal["ALLOW", "OMIT_PROPERTIES", "BLOCK"] = "ALLOW"


class TraitProtocols(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Segment's identify (and group) enforcement settings; all allow by default."""

    allowUnplannedTraits: bool = True
    allowTraitsOnViolations: bool = True
    commonEventOnViolations: Literal["ALLOW", "OMIT_TRAITS", "BLOCK"] = "ALLOW"


class SourceProtocols(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    track: TrackProtocols = msgspec.field(default_factory=TrackProtocols)
    identify: TraitProtocols = msgspec.field(default_factory=TraitProtocols)
    group: TraitProtocols = msgspec.field(default_factory=TraitProtocols)
    # Source names (cdpd has no source ids): where violations and blocked events go.
    forwardingViolationsTo: str | None = None
    forwardingBlockedEventsTo: str | None = None


SourceType = Literal["javascript", "server", "mobile", "http"]


class Source(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Name
    write_key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    enabled: bool = True
    # What sends to it, for the console's setup instructions; it changes nothing in ingest.
    type: SourceType | None = None
    # The name of a [[tracking_plans]] entry whose rules this source's messages are checked by.
    tracking_plan: str | None = None
    protocols: SourceProtocols = msgspec.field(default_factory=SourceProtocols)
    # Track event names dropped at ingestion, plan or no plan (Segment's "block event").
    blocked_events: list[str] = msgspec.field(default_factory=list)
    # Record every event, property and trait seen (the source schema).
    observe_schema: bool = True


class PropertyRename(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A property (or trait) path, dotted up to 4 levels, and where it goes instead."""

    oldName: Annotated[str, msgspec.Meta(min_length=1)]
    newName: Annotated[str, msgspec.Meta(min_length=1)]


class Transformation(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A Protocols transformation, under the Public API's names: for the messages of `source`
    that match `if` (FQL), rename the event and rename or move properties (traits for identify
    and group). Without `destination` it changes what is stored (before destination filters);
    with one, only what that destination receives."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    source: str
    destination: str | None = None
    enabled: bool = True
    if_: Annotated[str, msgspec.Meta(min_length=1)] = msgspec.field(name="if")
    newEventName: str | None = None
    propertyRenames: list[PropertyRename] = msgspec.field(default_factory=list)


class TrackingPlan(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A tracking plan file: Segment's rule format (`{"rules": [...]}`) or Typewriter's
    plan.json; a relative path is taken from the working directory."""

    name: Name
    path: str


class DeliveryConfig(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    # How long SIGTERM lets attempts in flight finish; the rest go back to pending.
    drain_timeout_s: PositiveFloat = 10.0
    # How often a lane looks for due work when nothing has woken it (deliveries re-queued by
    # `cdpd replay` from another process are found this way).
    poll_interval_s: PositiveFloat = 1.0
    # Delivered deliveries and their attempts are kept this long, then pruned.
    delivered_retention_s: NonNegativeInt = 3600
    # Messages (the archive that replay reads) and dead deliveries are kept this long.
    archive_retention_s: PositiveInt = 30 * 24 * 3600
    prune_interval_s: PositiveFloat = 60.0


class AdminConfig(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The bearer token for /admin endpoints: given here or named by an environment variable.
    With neither, the admin endpoints refuse every request."""

    token: str | None = None
    token_env: str | None = None
    # HOST:PORT of a separate listener for /admin and /metrics (then not on server.listen).
    listen: str | None = None

    def resolved_token(self) -> str | None:
        if self.token:
            return self.token
        if self.token_env:
            return env_secret(self.token_env)
        return None


class Workspace(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Sources, destinations and warehouses administered together; people and API tokens get
    a role per workspace (see `cdpd users` and `cdpd tokens`)."""

    name: Name
    title: str | None = None
    sources: list[str] = msgspec.field(default_factory=list)
    destinations: list[str] = msgspec.field(default_factory=list)
    warehouses: list[str] = msgspec.field(default_factory=list)
    # Keys of `[[audiences]]` and `[[computed_traits]]` whose pages the workspace shows.
    audiences: list[str] = msgspec.field(default_factory=list)


class ConsoleConfig(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The web console at /console/ and the workspace model's state file."""

    enabled: bool = True
    # People, roles, tokens and sessions; default <data_dir>/console.sqlite3.
    path: str | None = None
    # "auto": the session cookie is Secure when server.public_url (or the request) is https.
    secure_cookies: bool | Literal["auto"] = "auto"
    session_ttl_s: PositiveInt = 12 * 3600
    # Failed sign-ins allowed per name and per client address within the window, then 429.
    signin_max_failures: PositiveInt = 5
    signin_window_s: PositiveInt = 15 * 60
    # Messages the live debugger keeps per watcher (Segment's debugger shows 500).
    debugger_capacity: PositiveInt = 500

    def state_path(self, data_dir: str) -> Path:
        return Path(self.path) if self.path else Path(data_dir) / "console.sqlite3"


class _Warehouse(Section, tag_field="type", frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Name
    interval_s: PositiveFloat = 900.0
    # Columns per table; the values of columns past it go to the discards table. PostgreSQL's
    # own limit is 1600.
    max_columns: Annotated[int, msgspec.Meta(ge=20, le=1600)] = 1600


class SqliteWarehouse(
    _Warehouse, tag="sqlite", frozen=True, forbid_unknown_fields=True, kw_only=True
):
    # A separate SQLite file; default <data_dir>/warehouse.sqlite3 (see `warehouse_path`).
    path: str | None = None


class PostgresWarehouse(
    _Warehouse, tag="postgres", frozen=True, forbid_unknown_fields=True, kw_only=True
):
    dsn: Annotated[str, msgspec.Meta(pattern=r"^postgres(ql)?://")]


Warehouse = SqliteWarehouse | PostgresWarehouse

IdentifierType = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_.]{1,100}$")]


class IdentifierSettings(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Segment's identity resolution settings for one identifier type (a default type or a
    custom one). Unset keys keep Segment's defaults (see cdpd.identity.identifiers)."""

    type: IdentifierType
    # How many values of the type one profile may hold, within `window`.
    limit: PositiveInt | None = None
    window: Literal["ever", "weekly", "monthly", "annually"] | None = None
    # Lower is more important; unpinned types rank after email, alphabetically.
    priority: PositiveInt | None = None
    # Values never promoted to identifiers (they stay in the payload): exact values, regexes.
    blocked_values: list[str] = msgspec.field(default_factory=list)
    blocked_patterns: list[str] = msgspec.field(default_factory=list)
    # Segment's suggested blocked values (`^[0-]*$`, `-1`, `null`, `anonymous`).
    block_suggested: bool = True
    # A custom type: the trait or property key it is read from (camelCase or snake_case).
    key: str | None = None
    collection: Literal["users", "accounts"] = "users"


class IdentityConfig(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Unify: identity resolution into profiles, read through Segment's Profile API."""

    # The space id in Profile API URLs (/v1/spaces/{space}/...).
    space: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,100}$")]
    # Profile API access tokens (Basic auth username); or named by an environment variable
    # holding a comma-separated list.
    access_tokens: list[str] = msgspec.field(default_factory=list)
    access_tokens_env: str | None = None
    identifiers: list[IdentifierSettings] = msgspec.field(default_factory=list)
    events_history_days: PositiveInt = 14
    # Requests per second per space before 429 rate_limit_error (Segment: 100); 0 = no limit.
    rate_limit_per_s: NonNegativeInt = 0
    # The identity store, a SQLite file of its own; default <data_dir>/identity.sqlite3.
    path: str | None = None
    batch_messages: PositiveInt = 2000

    def resolved_tokens(self) -> list[str]:
        tokens = list(self.access_tokens)
        if self.access_tokens_env:
            raw = os.environ.get(self.access_tokens_env, "")
            tokens += [token.strip() for token in raw.split(",") if token.strip()]
        return tokens


def identity_path(config: Config) -> Path:
    """Where the identity store lives: `identity.path`, else `<data_dir>/identity.sqlite3`."""
    if config.identity is not None and config.identity.path is not None:
        return Path(config.identity.path)
    return Path(config.storage.data_dir) / "identity.sqlite3"


class Config(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    delivery: DeliveryConfig = msgspec.field(default_factory=DeliveryConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    sources: list[Source] = msgspec.field(default_factory=list)
    destinations: list[Destination] = msgspec.field(default_factory=list)
    warehouses: list[Warehouse] = msgspec.field(default_factory=list)
    tracking_plans: list[TrackingPlan] = msgspec.field(default_factory=list)
    transformations: list[Transformation] = msgspec.field(default_factory=list)
    workspaces: list[Workspace] = msgspec.field(default_factory=list)
    console: ConsoleConfig = msgspec.field(default_factory=ConsoleConfig)
    engage: EngageConfig = msgspec.field(default_factory=EngageConfig)
    audiences: list[AudienceConfig] = msgspec.field(default_factory=list)
    computed_traits: list[ComputedTraitConfig] = msgspec.field(default_factory=list)
    # A directory of TOML fragments adding entries to the lists above (cdpd/confd.py).
    include: str | None = None
    privacy: PrivacyConfig = msgspec.field(default_factory=PrivacyConfig)
    identity: IdentityConfig | None = None


def default_path() -> str:
    return os.environ.get("CDPD_CONFIG") or DEFAULT_CONFIG_PATH


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML file; a relative data_dir is taken from the working directory."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    document, origins = confd.merged(text, path)
    if document.get("include") is None:
        config = parse(text, origin=str(path))
    else:
        try:
            config = _checked(_convert(document, str(path)), str(path))
        except ConfigError as exc:
            raise ConfigError(confd.name_fragments(str(exc), origins)) from exc
    return _resolve_paths(config, Path.cwd())


def _convert(document: dict[str, object], origin: str) -> Config:
    try:
        return msgspec.convert(document, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {_explain(str(exc))}") from exc


def parse(text: bytes | str, *, origin: str = "<config>") -> Config:
    try:
        config = msgspec.toml.decode(text, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {_explain(str(exc))}") from exc
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from exc
    return _checked(config, origin)


def _checked(config: Config, origin: str) -> Config:
    problems = _cross_check(config)
    if problems:
        raise ConfigError(f"{origin}: " + "; ".join(problems))
    return config


def _explain(message: str) -> str:
    """Turn msgspec's `... - at `$.server.listen`` into `server.listen: ...`, and say which
    values a key accepts when it was given one it does not."""
    text, sep, where = message.rpartition(" - at `$")
    if not sep:
        return message
    where = where.rstrip("`").lstrip(".")
    if text == f"Expected `str` matching regex '{NAME_PATTERN}'":
        text = f"not a valid name: {NAME_RULE}"
    if text.startswith(("Invalid enum value", "Invalid value")):
        allowed = _allowed_values(where)
        if allowed:
            text += f" (expected one of: {', '.join(allowed)})"
    return f"{where}: {text}"


def _allowed_values(where: str) -> list[str]:
    """The literal values (or destination types) the config accepts at a key path."""
    info: msgspec.inspect.Type = msgspec.inspect.type_info(Config)
    for part in re.split(r"\.|\[\d+\]|\[\.\.\.\]", where):
        if not part:
            continue
        info = _unwrap(info)
        if isinstance(info, msgspec.inspect.UnionType):
            structs = [t for t in info.types if isinstance(t, msgspec.inspect.StructType)]
            if structs and part == structs[0].tag_field:
                return [str(t.tag) for t in structs]
            # A key of tagged Structs (destination types): its type, if every type that has
            # the key agrees on it.
            found = [f.type for t in structs for f in t.fields if f.encode_name == part]
            if not found or any(kind != found[0] for kind in found):
                return []
            info = found[0]
            continue
        if not isinstance(info, msgspec.inspect.StructType):
            return []
        if part == info.tag_field:
            return [str(info.tag)]
        fields = {f.encode_name: f.type for f in info.fields}
        if part not in fields:
            return []
        info = fields[part]
    info = _unwrap(info)
    if isinstance(info, msgspec.inspect.LiteralType):
        return sorted(str(value) for value in info.values)
    return []


def _unwrap(info: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """Look through lists, tables of names and optional values to the type of one value."""
    while True:
        if isinstance(info, msgspec.inspect.ListType):
            info = info.item_type
        elif isinstance(info, msgspec.inspect.DictType):
            info = info.value_type
        elif isinstance(info, msgspec.inspect.UnionType) and any(
            isinstance(t, msgspec.inspect.NoneType) for t in info.types
        ):
            rest = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
            if len(rest) != 1:
                return info
            info = rest[0]
        else:
            return info


def _cross_check(config: Config) -> list[str]:
    problems: list[str] = []
    try:
        _split_listen(config.server.listen)
    except ValueError as exc:
        problems.append(f"server.listen: {exc}")
    if config.admin.listen is not None:
        try:
            _split_listen(config.admin.listen)
        except ValueError as exc:
            problems.append(f"admin.listen: {exc}")
    if config.server.public_url is not None and not config.server.public_url.startswith(
        ("http://", "https://")
    ):
        problems.append("server.public_url: expected a URL starting with http:// or https://")
    problems += _duplicates("sources", "name", [s.name for s in config.sources])
    problems += _duplicates("sources", "write_key", [s.write_key for s in config.sources])
    problems += _duplicates("destinations", "name", [d.name for d in config.destinations])
    problems += _duplicates(
        "destinations",
        "path",
        [
            os.path.normpath(d.path) if isinstance(d, FileDestination) else f"\0{index}"
            for index, d in enumerate(config.destinations)
        ],
    )
    source_names = {s.name for s in config.sources}
    for index, dest in enumerate(config.destinations):
        for header, value in getattr(dest, "headers", {}).items():
            if _HEADER_BREAK.search(header + value) or not _HEADER_NAME.fullmatch(header):
                problems.append(
                    f"destinations[{index}].headers.{header}: not a valid HTTP header"
                    " (a token for the name; no line breaks in the value)"
                )
        for name in dest.sources or ():
            if name not in source_names:
                problems.append(
                    f"destinations[{index}].sources: no source is named {name!r} "
                    f"(known: {', '.join(sorted(source_names)) or 'none'})"
                )
    return (
        problems
        + _check_warehouses(config)
        + _check_protocols(config)
        + _check_workspaces(config)
        + _check_engage(config)
        + _check_privacy(config)
        + _check_identity(config)
        + _check_snapshots(config)
    )


# JetStream drops a second copy of a message id for this long (its streams' duplicate window).
JETSTREAM_DEDUP_WINDOW_S = 120


def _check_snapshots(config: Config) -> list[str]:
    """A node taking the profiles lease over sends Engage's messages again from the last
    snapshot: they must still be inside a dedup window to be dropped."""
    storage = config.storage
    if storage.backend != "jetstream" or config.identity is None:
        return []
    interval_s = storage.jetstream.snapshot_interval_s
    window_s = max(JETSTREAM_DEDUP_WINDOW_S, storage.dedup_window_s)
    if storage.dedup_window_s == 0 or interval_s >= window_s:
        return [
            f"storage.jetstream.snapshot_interval_s: {interval_s:g} s must be below the dedup"
            f" window ({window_s} s; storage.dedup_window_s = {storage.dedup_window_s}), or"
            " Engage's messages sent again after a failover would not be dropped as duplicates"
        ]
    return []


def _check_workspaces(config: Config) -> list[str]:
    """Every name a workspace lists exists, and belongs to that workspace alone."""
    problems = _duplicates("workspaces", "name", [w.name for w in config.workspaces])
    known = {
        "sources": {s.name for s in config.sources},
        "destinations": {d.name for d in config.destinations},
        "warehouses": {w.name for w in config.warehouses},
        "audiences": {a.key for a in config.audiences} | {t.key for t in config.computed_traits},
    }
    owner: dict[tuple[str, str], str] = {}
    for index, workspace in enumerate(config.workspaces):
        for section, names in known.items():
            for name in getattr(workspace, section):
                where = f"workspaces[{index}].{section}"
                if name not in names:
                    problems.append(f"{where}: no {section[:-1]} is named {name!r}")
                elif (section, name) in owner:
                    problems.append(
                        f"{where}: {name!r} already belongs to workspace {owner[section, name]!r}"
                    )
                else:
                    owner[section, name] = workspace.name
    return problems


def _check_engage(config: Config) -> list[str]:
    from cdpd.engage.settings import check  # compiles every query; imported late, as above

    destinations = {d.name for d in config.destinations}
    return check(config.audiences, config.computed_traits, destinations)


def engage_path(config: Config) -> Path:
    """Engage's own SQLite file: `[engage] path`, else `<data_dir>/engage.sqlite3`."""
    if config.engage.path is not None:
        return Path(config.engage.path)
    return Path(config.storage.data_dir) / "engage.sqlite3"


def _check_privacy(config: Config) -> list[str]:
    from cdpd.privacy.settings import check  # pure; imported late, as naming below

    return check(
        config.privacy,
        {s.name for s in config.sources},
        {d.name for d in config.destinations},
        {w.name for w in config.warehouses},
    )


def _check_identity(config: Config) -> list[str]:
    if config.identity is None:
        return []
    from cdpd.identity.identifiers import check  # pure; imported late, as naming above

    problems = _duplicates(
        "identity.identifiers", "type", [i.type for i in config.identity.identifiers]
    )
    if identity_path(config).resolve() == config.storage.outbox_path.resolve():
        problems.append("identity.path: the identity store cannot be the outbox")
    return problems + [f"identity.{problem}" for problem in check(config.identity)]


def _check_protocols(config: Config) -> list[str]:
    problems = _duplicates("tracking_plans", "name", [p.name for p in config.tracking_plans])
    plans = {p.name for p in config.tracking_plans}
    sources = {s.name for s in config.sources}
    for index, source in enumerate(config.sources):
        if source.tracking_plan is not None and source.tracking_plan not in plans:
            problems.append(
                f"sources[{index}].tracking_plan: no tracking plan is named "
                f"{source.tracking_plan!r} (known: {', '.join(sorted(plans)) or 'none'})"
            )
        protocols = source.protocols
        for key in ("forwardingViolationsTo", "forwardingBlockedEventsTo"):
            target = getattr(protocols, key)
            if target is None:
                continue
            if target not in sources:
                problems.append(f"sources[{index}].protocols.{key}: no source is named {target!r}")
            elif target == source.name:
                problems.append(
                    f"sources[{index}].protocols.{key}: a source cannot forward to itself"
                )
    return problems + _check_transformations(config, sources)


def _check_transformations(config: Config, sources: set[str]) -> list[str]:
    from cdpd.governance.transformations import check  # pure; imported late, as naming above

    problems = []
    for index, transformation in enumerate(config.transformations):
        where = f"transformations[{index}]"
        if transformation.source not in sources:
            problems.append(f"{where}.source: no source is named {transformation.source!r}")
        destinations = {d.name for d in config.destinations}
        if (
            transformation.destination is not None
            and transformation.destination not in destinations
        ):
            problems.append(
                f"{where}.destination: no destination is named {transformation.destination!r}"
            )
        problems += [f"{where}.{problem}" for problem in check(transformation)]
    return problems


def warehouse_path(config: Config, warehouse: SqliteWarehouse) -> Path:
    """Where a SQLite warehouse lives: its `path`, else `<data_dir>/warehouse.sqlite3`."""
    if warehouse.path is not None:
        return Path(warehouse.path)
    return Path(config.storage.data_dir) / "warehouse.sqlite3"


def _check_warehouses(config: Config) -> list[str]:
    from cdpd.warehouse.naming import schema_name  # pure; imported late to keep config a leaf

    problems = _duplicates("warehouses", "name", [w.name for w in config.warehouses])
    seen_paths: set[Path] = {config.storage.outbox_path.resolve()}
    for index, warehouse in enumerate(config.warehouses):
        if isinstance(warehouse, SqliteWarehouse):
            path = warehouse_path(config, warehouse).resolve()
            if path in seen_paths:
                problems.append(
                    f"warehouses[{index}].path: {str(path)!r} is the outbox or another warehouse"
                )
            seen_paths.add(path)
    if config.warehouses:
        schemas: dict[str, str] = {}
        for index, source in enumerate(config.sources):
            schema = schema_name(source.name)
            if not schema:
                problems.append(f"sources[{index}].name: {source.name!r} gives no schema name")
            elif schema in schemas:
                problems.append(
                    f"sources[{index}].name: {source.name!r} has the same warehouse schema "
                    f"({schema!r}) as {schemas[schema]!r}"
                )
            schemas.setdefault(schema, source.name)
    return problems


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_BREAK = re.compile(r"[\r\n\x00]")


def _duplicates(section: str, key: str, values: list[str]) -> list[str]:
    seen: set[str] = set()
    problems = []
    for index, value in enumerate(values):
        if value in seen:
            shown = value if key != "write_key" else value[:4] + "..."
            problems.append(f"{section}[{index}].{key}: {shown!r} is used twice")
        seen.add(value)
    return problems


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    return host.strip("[]"), port


def _resolve_paths(config: Config, base: Path) -> Config:
    plans = [
        p if Path(p.path).is_absolute() else msgspec.structs.replace(p, path=str(base / p.path))
        for p in config.tracking_plans
    ]
    if plans != config.tracking_plans:
        config = msgspec.structs.replace(config, tracking_plans=plans)
    warehouses = [_resolve_warehouse_path(w, base) for w in config.warehouses]
    if warehouses != config.warehouses:
        config = msgspec.structs.replace(config, warehouses=warehouses)
    destinations = [_resolve_file_path(d, base) for d in config.destinations]
    if destinations != config.destinations:
        config = msgspec.structs.replace(config, destinations=destinations)
    identity = config.identity
    if identity is not None and identity.path is not None and not Path(identity.path).is_absolute():
        identity = msgspec.structs.replace(identity, path=str((base / identity.path).resolve()))
        config = msgspec.structs.replace(config, identity=identity)
    data_dir = Path(config.storage.data_dir)
    if data_dir.is_absolute():
        return config
    storage = msgspec.structs.replace(config.storage, data_dir=str((base / data_dir).resolve()))
    return msgspec.structs.replace(config, storage=storage)


def _resolve_file_path(destination: Destination, base: Path) -> Destination:
    if not isinstance(destination, FileDestination) or Path(destination.path).is_absolute():
        return destination
    return msgspec.structs.replace(destination, path=str((base / destination.path).resolve()))


def _resolve_warehouse_path(warehouse: Warehouse, base: Path) -> Warehouse:
    if not isinstance(warehouse, SqliteWarehouse) or warehouse.path is None:
        return warehouse
    if Path(warehouse.path).is_absolute():
        return warehouse
    return msgspec.structs.replace(warehouse, path=str((base / warehouse.path).resolve()))
