"""The console's people and sessions on the JetStream backend, in two key-value buckets every node
reads, so that a person signs in once and any node behind the load balancer knows them:

* `<stream>_console`: `people.<name>` (the name base64url-encoded, as a key allows only a few
  characters): `{"name", "password_hash", "roles": {workspace: role}}`;
* `<stream>_sessions`: `<sha256 of the session id>`: `{"person", "csrf_token", "expires_at"}`,
  the bucket's TTL being `[console] session_ttl_s`, so an expired session goes by itself.

`cdpd users` writes the first with the same config; sign-ins are recorded by the log lines
(`console_signin`, `console_signin_failed`), not in a table."""

from __future__ import annotations

import base64
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from cdpd.cluster import connect
from cdpd.cluster.buckets import current
from cdpd.cluster.layout import Layout
from cdpd.config import Config, JetStreamConfig
from cdpd.console.state import Person, Session, sha256
from cdpd.console.web import Refused
from cdpd.model.timestamps import format_ms, now_ms

PEOPLE = "people."
P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)


def cluster_answers(
    read: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """A console read the cluster did not answer is a 503 page saying so, not a failure."""

    @functools.wraps(read)
    async def answered(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await read(*args, **kwargs)
        except (nats.errors.Error, TimeoutError, ConnectionError) as exc:
            raise Refused(503, f"The JetStream cluster did not answer: {exc!r}") from None

    return answered


def person_key(name: str) -> str:
    encoded = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
    return PEOPLE + (encoded or "=")


async def sessions_bucket(
    js: JetStreamContext, config: JetStreamConfig, layout: Layout, ttl_s: int
) -> KeyValue:
    """The sessions bucket, created with (or moved to) the configured session lifetime."""
    wanted = KeyValueConfig(
        bucket=layout.sessions_bucket,
        description="cdpd console sessions",
        ttl=float(ttl_s),
        storage=StorageType.FILE,
        replicas=config.replicas,
    )

    async def make_sure() -> KeyValue:
        try:
            return await js.create_key_value(wanted)
        except BadRequestError:  # it exists with another lifetime: the config's wins
            info = await js.stream_info(f"KV_{layout.sessions_bucket}")
            info.config.max_age = float(ttl_s)
            await js.update_stream(info.config)
            return await js.key_value(layout.sessions_bucket)

    return await connect.made_sure(make_sure, f"bucket {layout.sessions_bucket}")


class KvState:
    """`ConsoleState` over the buckets, and what `cdpd users` changes in them."""

    def __init__(
        self, js: JetStreamContext, layout: Layout, people: KeyValue, sessions: KeyValue
    ) -> None:
        self._js = js
        self._layout = layout
        self._people = people
        self._sessions = sessions

    # -- what the console reads and writes ---------------------------------------------------

    @cluster_answers
    async def person(self, name: str) -> Person | None:
        return await _read(self._people, person_key(name), Person)

    @cluster_answers
    async def session(self, session_id: str) -> Session | None:
        found = await _read(self._sessions, sha256(session_id), Session)
        return found if found and found.expires_at > format_ms(now_ms()) else None

    @cluster_answers
    async def add_session(self, session_id: str, name: str, csrf_token: str, ttl_s: int) -> None:
        expires_at = format_ms(now_ms() + ttl_s * 1000)
        value = msgspec.json.encode(Session(name, csrf_token, expires_at))
        await self._sessions.put(sha256(session_id), value)

    @cluster_answers
    async def end_session(self, session_id: str) -> None:
        await self._sessions.purge(sha256(session_id))

    async def log_signin(self, name: str, address: str | None, *, succeeded: bool) -> None:
        """Nothing to write: the console's log lines are the sign-in record on this backend."""

    # -- what `cdpd users` does ----------------------------------------------------------------

    async def people(self) -> list[Person]:
        stored = await current(self._js, self._layout.console_bucket, f"{PEOPLE}>")
        people = [_decoded(entry.value, Person) for entry in stored]
        return sorted((p for p in people if p is not None), key=lambda p: p.name)

    async def add_person(self, name: str, password_hash: str, workspace: str, role: str) -> bool:
        """False when the name is taken."""
        value = msgspec.json.encode(Person(name, password_hash, {workspace: role}))
        try:
            await self._people.create(person_key(name), value)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def set_role(self, name: str, workspace: str, role: str) -> bool:
        found = await self.person(name)
        if found is None:
            return False
        await self._write(Person(found.name, found.password_hash, {**found.roles, workspace: role}))
        return True

    async def set_password(self, name: str, password_hash: str) -> bool:
        """Change the hash and end every session of the person."""
        found = await self.person(name)
        if found is None:
            return False
        await self._write(Person(found.name, password_hash, found.roles))
        await self._end_sessions_of(name)
        return True

    async def remove_person(self, name: str) -> bool:
        if await self.person(name) is None:
            return False
        await self._people.purge(person_key(name))
        await self._end_sessions_of(name)
        return True

    async def _write(self, person: Person) -> None:
        await self._people.put(person_key(person.name), msgspec.json.encode(person))

    async def _end_sessions_of(self, name: str) -> None:
        for entry in await current(self._js, self._layout.sessions_bucket):
            found = _decoded(entry.value, Session)
            if found is not None and found.person == name:
                await self._sessions.purge(entry.key)


async def _read(bucket: KeyValue, key: str, kind: type[S]) -> S | None:
    """The key's value as a `kind`, or None when there is none (never written, or purged)."""
    try:
        entry = await bucket.get(key)
    except KeyNotFoundError:
        return None
    return _decoded(entry.value, kind)


def _decoded(value: bytes | None, kind: type[S]) -> S | None:
    return msgspec.json.decode(value, type=kind) if value else None


@asynccontextmanager
async def people_in_cluster(config: Config) -> AsyncIterator[KvState]:
    """The buckets, for `cdpd users` (made sure of, as a node does at start)."""
    jetstream = config.storage.jetstream
    layout = Layout.of(jetstream)
    async with connect.connected(jetstream, name="cdpd users") as client:
        js = client.jetstream(timeout=jetstream.connect_timeout_s)
        await connect.ensure(js, jetstream, layout)
        people = await js.key_value(layout.console_bucket)
        sessions = await sessions_bucket(js, jetstream, layout, config.console.session_ttl_s)
        yield KvState(js, layout, people, sessions)
