"""Where the JetStream backend keeps things: stream, subject, consumer and bucket names, and how
one accepted message is laid out as a JetStream message. These names are public interface (the
`nats` CLI shows them; docs/scaling.md lists them); every node derives them from the same config.

A message's body is its stored JSON, byte for byte; its columns (`messages` in the SQLite outbox)
travel as headers, so a consumer filters without decoding the payload. The stream sequence plays
the part of the outbox's `seq`.
"""

from __future__ import annotations

import hashlib
import zlib
from urllib.parse import quote, unquote

import msgspec

from cdpd.config import JetStreamConfig
from cdpd.model.rows import OutboxRow

MSG_ID = "Nats-Msg-Id"
SOURCE = "Cdpd-Source"
TYPE = "Cdpd-Type"
EVENT = "Cdpd-Event"
USER_ID = "Cdpd-User-Id"
ANONYMOUS_ID = "Cdpd-Anonymous-Id"
RECEIVED_AT = "Cdpd-Received-At"
MESSAGE_ID = "Cdpd-Message-Id"
DESTINATION = "Cdpd-Destination"
# On a message imported from a SQLite outbox (`cdpd outbox import`): the destinations still owed
# it there, and the warehouses that had loaded it, as JSON arrays of names.
OWED_TO = "Cdpd-Owed-To"
LOADED_IN = "Cdpd-Loaded-In"

# Header values are one line of text: user-provided values (event names, user ids) are
# percent-encoded outside printable ASCII, and `%` itself.
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def _text(value: str) -> str:
    if value.isascii() and value.isprintable() and "%" not in value:
        return value  # what quote() would return, without its cost (most values)
    return quote(value, safe=_SAFE)


def token(name: str) -> str:
    """A config name (letters, digits, `_`, `.`, `-`) as one subject token or consumer name,
    which cannot hold a `.`; `~` never occurs in a name, so the mapping is reversible."""
    return name.replace(".", "~")


def name_of(token_: str) -> str:
    return token_.replace("~", ".")


class Layout(msgspec.Struct, frozen=True):
    """The names derived from `[storage.jetstream]`."""

    stream: str = "CDPD"
    partitions: int = 16

    @classmethod
    def of(cls, config: JetStreamConfig) -> Layout:
        return cls(stream=config.stream, partitions=config.partitions)

    @property
    def prefix(self) -> str:
        return self.stream.lower()

    # -- accepted messages -----------------------------------------------------------------------

    @property
    def messages_subjects(self) -> str:
        return f"{self.prefix}.msg.*"

    def message_subject(self, partition: int) -> str:
        return f"{self.prefix}.msg.{partition}"

    def partition_of(self, order_key: str | None) -> int:
        """Messages of one user share a subject, so per-user order holds on every node."""
        if not order_key:
            return 0
        return zlib.crc32(order_key.encode()) % self.partitions

    def subject_for(self, row: OutboxRow) -> str:
        return self.message_subject(self.partition_of(row.user_id or row.anonymous_id))

    # -- what else ingest writes (rejects, violations, blocked messages, inbox samples...) -------

    @property
    def aux_stream(self) -> str:
        return f"{self.stream}_AUX"

    @property
    def aux_subjects(self) -> str:
        return f"{self.prefix}.aux.>"

    def aux_subject(self, table: str) -> str:
        return f"{self.prefix}.aux.{token(table)}"

    # -- cdpd's dedup window beyond JetStream's (one marker subject per message id) -------------

    @property
    def dedup_stream(self) -> str:
        return f"{self.stream}_DEDUP"

    @property
    def dedup_subjects(self) -> str:
        return f"{self.prefix}.dedup.*"

    def dedup_subject(self, dedup_key: str) -> str:
        """A message id may hold any character; its hash is one subject token."""
        digest = hashlib.blake2b(dedup_key.encode(), digest_size=16).hexdigest()
        return f"{self.prefix}.dedup.{digest}"

    # -- delivery ----------------------------------------------------------------------------------

    def delivery_consumer(self, destination: str) -> str:
        """The durable consumer all nodes' lanes for `destination` share."""
        return f"delivery_{token(destination)}"

    def partition_consumer(self, destination: str, partition: int) -> str:
        """With `ordering = "user"`: one consumer per partition subject."""
        return f"{self.delivery_consumer(destination)}_p{partition}"

    @property
    def dead_stream(self) -> str:
        return f"{self.stream}_DEAD"

    @property
    def dead_subjects(self) -> str:
        return f"{self.prefix}.dead.*"

    def dead_subject(self, destination: str) -> str:
        return f"{self.prefix}.dead.{token(destination)}"

    # -- the console's counts per interval, each node's per minute and per hour (flow_counts.py) --

    @property
    def metrics_stream(self) -> str:
        return f"{self.stream}_METRICS"

    @property
    def metrics_subjects(self) -> str:
        return f"{self.prefix}.metrics.>"

    def metrics_subject(
        self, scope: str, name: str, granularity: str, instance: str, period: str
    ) -> str:
        """One node's (`instance`) record of what it counted for a destination (`scope`
        "destination") while the minute or hour `period` (`granularity` "m" or "h") lasted."""
        return f"{self.metrics_filter(scope, name, granularity)[:-1]}{instance}.{period}"

    def metrics_filter(self, scope: str, name: str, granularity: str) -> str:
        """Every node's records of one name at one granularity."""
        return f"{self.prefix}.metrics.{scope}.{token(name)}.{granularity}.>"

    # -- commands to the profiles lease holder (unmerges, regulations' deletions) ---------------

    @property
    def commands_stream(self) -> str:
        return f"{self.stream}_COMMANDS"

    @property
    def profile_commands_subject(self) -> str:
        return f"{self.prefix}.cmd.profiles"

    def warehouse_sync_subject(self, warehouse: str) -> str:
        """Core NATS, no stream: a request to the warehouse's lease holder to sync it now."""
        return f"{self.prefix}.sync.{token(warehouse)}"

    @property
    def outcomes_bucket(self) -> str:
        """What the profiles lease holder made of each command, by command id."""
        return f"{self.stream}_outcomes"

    # -- shared state (key-value buckets) ----------------------------------------------------------

    @property
    def leases_bucket(self) -> str:
        return f"{self.stream}_leases"

    @property
    def positions_bucket(self) -> str:
        return f"{self.stream}_positions"

    @property
    def circuits_bucket(self) -> str:
        return f"{self.stream}_circuits"

    @property
    def rates_bucket(self) -> str:
        return f"{self.stream}_rates"

    @property
    def inventory_bucket(self) -> str:
        """The privacy inventory: one key per classified field (cdpd/cluster/privacy_store.py)."""
        return f"{self.stream}_inventory"

    @property
    def inbox_bucket(self) -> str:
        """The privacy inbox: one key per field a source sent."""
        return f"{self.stream}_inbox"

    @property
    def state_bucket(self) -> str:
        """The object store holding snapshots of the profiles stages' files."""
        return f"{self.stream}_state"

    @property
    def console_bucket(self) -> str:
        """The console's people (with their roles) and sessions, shared by every node."""
        return f"{self.stream}_console"

    @property
    def sessions_bucket(self) -> str:
        """The console's sessions, kept `[console] session_ttl_s` after their sign-in."""
        return f"{self.stream}_sessions"

    @property
    def confd_bucket(self) -> str:
        """The console's config changes: one key per conf.d file name, its TOML as the value."""
        return f"{self.stream}_confd"

    @property
    def regulations_bucket(self) -> str:
        """Regulations, their targets' progress and the suppressions in force."""
        return f"{self.stream}_regulations"

    @property
    def ledger_bucket(self) -> str:
        """Delivery's exception ledger and replay jobs (cdpd/cluster/ledger.py)."""
        return f"{self.stream}_ledger"

    def replay_consumer(self, destination: str, job_id: int) -> str:
        """A replay job's own durable consumer, beside the destination's live one."""
        return f"replay_{token(destination)}_{job_id}"


def warehouse_lease_key(warehouse: str) -> str:
    """The warehouse's key in the leases bucket."""
    return f"warehouse.{warehouse}"


def dedup_id(row: OutboxRow, *, by_source: bool) -> str:
    """`Nats-Msg-Id`: JetStream drops a second message with this id inside its window."""
    return f"{row.source}:{row.message_id}" if by_source else row.message_id


def headers_of(row: OutboxRow, *, by_source: bool) -> dict[str, str]:
    headers = {
        MSG_ID: _text(dedup_id(row, by_source=by_source)),
        MESSAGE_ID: _text(row.message_id),
        SOURCE: row.source,
        TYPE: row.type,
        RECEIVED_AT: row.received_at,
    }
    if row.event is not None:
        headers[EVENT] = _text(row.event)
    if row.user_id is not None:
        headers[USER_ID] = _text(row.user_id)
    if row.anonymous_id is not None:
        headers[ANONYMOUS_ID] = _text(row.anonymous_id)
    return headers


def names_header(names: list[str]) -> str:
    """A list of config names as one header value (names hold no character JSON escapes)."""
    return msgspec.json.encode(names).decode()


def names_in(value: str) -> frozenset[str]:
    """The names of a `names_header` value; none when it is not one."""
    try:
        names = _names.decode(value)
    except msgspec.DecodeError:
        return frozenset()
    return frozenset(names)


_names = msgspec.json.Decoder(list[str])


def row_of(headers: dict[str, str] | None, body: bytes) -> OutboxRow:
    """The message as ingest stored it, from a JetStream message's headers and body."""
    h = headers or {}
    return OutboxRow(
        message_id=unquote(h.get(MESSAGE_ID, "")),
        source=h.get(SOURCE, ""),
        type=h.get(TYPE, ""),
        event=_optional(h.get(EVENT)),
        user_id=_optional(h.get(USER_ID)),
        anonymous_id=_optional(h.get(ANONYMOUS_ID)),
        received_at=h.get(RECEIVED_AT, ""),
        payload=body.decode(),
    )


def _optional(value: str | None) -> str | None:
    return None if value is None else unquote(value)
