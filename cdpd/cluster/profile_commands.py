"""Commands to the holder of the `profiles` lease, from any node: a regulation's deletion from
the identity store and Engage (`forget_users`), an unmerge (`POST /admin/profiles/unmerge`).

A command is a message on the commands stream (`<STREAM>_COMMANDS`), carrying the messages
stream's last sequence when it was asked (`after_seq`): the holder applies it once its identity
stage has resolved up to there, and holds the stage at that sequence until it has, so a later
holder replaying the command after a failover applies it at the same place among the messages.
Its outcome goes into the outcomes bucket (`<STREAM>_outcomes`) under the command's id, once
the holder has stored a snapshot holding its effect; the asker waits for it there, on a watch
of that one key (an ordered consumer: the outcome is pushed as it is written, no polling),
reading the key itself every `OUTCOME_CHECK_S` too, so that a cluster that stops answering
during the wait shows as an error within that time rather than at the wait's end.

The states of an outcome: `taken` (the holder is carrying it out), then `done`, `refused`
(the identity store will not do it: an unmerge that cannot be), `failed` (to be asked
again); or `withdrawn`, written by an asker that gave up waiting before the holder took it:
no holder carries it out then (the key's create decides which of the two came first).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Final, Literal

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from cdpd.cluster.layout import Layout

FORGET: Final = "forget_users"
UNMERGE: Final = "unmerge"
TAKEN: Final = "taken"
DONE: Final = "done"
REFUSED: Final = "refused"
FAILED: Final = "failed"
WITHDRAWN: Final = "withdrawn"
FINAL = frozenset({DONE, REFUSED, FAILED, WITHDRAWN})
OUTCOME_CHECK_S = 5.0
# The server removes a watch's consumer this long after its asker left (or vanished).
WATCH_INACTIVE_S = 5.0


class ProfileCommand(msgspec.Struct, frozen=True, kw_only=True):
    """What the holder is asked to do, as it travels in the commands stream."""

    id: str
    kind: Literal["forget_users", "unmerge"]
    after_seq: int  # the messages stream's last sequence when it was asked
    users: list[str] = []  # forget_users
    identifier: tuple[str, str] | None = None  # unmerge: (type, value)
    collection: str = "users"


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    state: Literal["taken", "done", "refused", "failed", "withdrawn"]
    rows: int = 0  # forget_users: the rows removed from the identity store
    profiles: list[str] = []  # unmerge: where the identifier's former profile went
    error: str | None = None


_command = msgspec.json.Decoder(ProfileCommand)
_outcome = msgspec.json.Decoder(Outcome)
encode = msgspec.json.encode


def command_of(data: bytes) -> ProfileCommand | None:
    """None for a message that is no command (written by a newer or broken cdpd)."""
    try:
        return _command.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


async def outcome_of(kv: KeyValue, command_id: str) -> Outcome | None:
    try:
        entry = await kv.get(command_id)
    except KeyNotFoundError:
        return None
    return _outcome.decode(entry.value) if entry.value else None


async def take(kv: KeyValue, command_id: str) -> bool:
    """The holder's claim before it carries a command out: False when the asker withdrew it.
    A command taken before (by a holder that stopped) is taken again."""
    try:
        await kv.create(command_id, encode(Outcome(state=TAKEN)))
        return True
    except (KeyWrongLastSequenceError, KeyNotFoundError):  # (not found: see cluster/lease.py)
        found = await outcome_of(kv, command_id)
        return found is None or found.state != WITHDRAWN


class ProfileCommands:
    """The asking side, on any node (and the CLI): publish a command, wait for its outcome."""

    def __init__(self, js: JetStreamContext, layout: Layout) -> None:
        self._js = js
        self._layout = layout

    async def ask(
        self,
        kind: Literal["forget_users", "unmerge"],
        wait_s: float,
        *,
        command_id: str | None = None,
        users: Sequence[str] = (),
        identifier: tuple[str, str] | None = None,
        collection: str = "users",
    ) -> Outcome:
        """The command's outcome; `taken` when the holder took it but did not finish within
        `wait_s` (it still will), `withdrawn` when no holder took it within `wait_s`."""
        kv = await self._js.key_value(self._layout.outcomes_bucket)
        command_id = command_id or uuid.uuid4().hex
        found = await outcome_of(kv, command_id)
        if found is not None and found.state in FINAL:
            return found  # asked before (a deletion asked again after a restart)
        after_seq = (await self._js.stream_info(self._layout.stream)).state.last_seq
        command = ProfileCommand(
            id=command_id,
            kind=kind,
            after_seq=after_seq,
            users=list(users),
            identifier=identifier,
            collection=collection,
        )
        await self._js.publish(
            self._layout.profile_commands_subject,
            encode(command),
            stream=self._layout.commands_stream,
            headers={"Nats-Msg-Id": command_id},
        )
        return await self._outcome(kv, command_id, wait_s)

    async def _outcome(self, kv: KeyValue, command_id: str, wait_s: float) -> Outcome:
        found = await _final_outcome(kv, command_id, wait_s)
        if found is not None:
            return found
        try:
            await kv.create(command_id, encode(Outcome(state=WITHDRAWN)))
            return Outcome(state=WITHDRAWN)
        except (KeyWrongLastSequenceError, KeyNotFoundError):  # the holder took it meanwhile
            return await outcome_of(kv, command_id) or Outcome(state=TAKEN)


@contextlib.asynccontextmanager
async def _watching(kv: KeyValue, key: str) -> AsyncIterator[KeyValue.KeyWatcher]:
    watcher = await kv.watch(key, inactive_threshold=WATCH_INACTIVE_S)
    try:
        yield watcher
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped


async def _final_outcome(kv: KeyValue, command_id: str, wait_s: float) -> Outcome | None:
    """The command's final outcome as soon as it is written; None if not within `wait_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    async with _watching(kv, command_id) as watcher:
        while (left_s := deadline - loop.time()) > 0:
            try:
                entry = await watcher.updates(timeout=min(left_s, OUTCOME_CHECK_S))  # type: ignore[no-untyped-call]
            except TimeoutError:
                found = await outcome_of(kv, command_id)  # raises when the cluster is gone
            else:
                found = _outcome.decode(entry.value) if entry and entry.value else None
            if found is not None and found.state in FINAL:
                return found
    return None
