"""`cdpd audiences preview`: how many profiles (or accounts) a query matches now, saving
nothing. The query is compiled like a definition and evaluated over every stored profile,
through its own read-only connection, reading only what it needs: a query on traits decodes
each profile's traits and values; a query on events reads the `engage_buckets` rows of its
streams only, and when it reads no trait, only the profiles that have such rows (every other
profile gives the same answer, computed once). Event chains that no configured definition
keeps have no buckets yet, so they count as no events, and the answer says which they were."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec

from cdpd.engage.catalog import Catalog
from cdpd.engage.evaluation import Ctx, Plan
from cdpd.engage.tables import MEMBERS, decode_account, decode_buckets, decode_profile


class Preview(msgspec.Struct, frozen=True):
    matching: int
    profiles: int  # profiles evaluated (accounts, for an account audience)
    # Event chains of the query that no configured definition keeps: counted as no events.
    unkept_events: tuple[str, ...]


class _Profile:
    """`ctx.state` as a plan reads it in a preview: one object, refilled for each profile."""

    __slots__ = ("streams", "traits")

    def __init__(self, streams: Any) -> None:
        self.traits: dict[str, Any] = {}
        self.streams = streams


def _only(keys: list[str]) -> type[msgspec.Struct]:
    """A Struct of these keys (any text: field names are renamed to them), absent ones UNSET."""
    fields = [(f"k{n}", Any, msgspec.UNSET) for n in range(len(keys))]
    rename = {f"k{n}": key for n, key in enumerate(keys)}
    return msgspec.defstruct("Only", fields, rename=rename)


def _head_reader(trait_keys: list[str], value_keys: list[str]) -> Any:
    """Decodes a stored head into [traits, values], dicts of the plan's keys only."""
    traits_type, values_type = _only(trait_keys), _only(value_keys)
    # A stored head starts with its traits and values; the fields after them are skipped.
    head = msgspec.defstruct(
        "Head", [("traits", traits_type), ("values", values_type)], array_like=True
    )
    decode = msgspec.msgpack.Decoder(head).decode
    as_lists = msgspec.to_builtins  # [traits, values], without the UNSET (absent) keys

    def read(blob: bytes) -> list[dict[str, Any]]:
        return as_lists(decode(blob))  # type: ignore[no-any-return]

    return read


class _Streams:
    """`state.streams` as a plan reads it: each stream's row, decoded on demand."""

    __slots__ = ("profile_id", "rows")

    def __init__(self, rows: dict[str, dict[str, bytes]]) -> None:
        self.rows = rows
        self.profile_id = ""

    def get(self, stream_id: str) -> dict[int, Any] | None:
        blob = self.rows[stream_id].get(self.profile_id)
        return None if blob is None else decode_buckets(blob)


def preview(path: str | Path, plan: Plan, kept: Catalog, now_ms: int) -> Preview:
    """Synchronous and read-only; run it in a thread from async code."""
    unkept = tuple(
        sorted(
            f"event({s.spec.event!r})" + (f".where({s.spec.where})" if s.spec.where else "")
            for s in plan.streams
            if s.spec.id not in kept.streams
        )
    )
    conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        if plan.account:
            return _preview_accounts(conn, plan, now_ms, unkept)
        if plan.streams and not plan.trait_refs:
            matching, profiles = _count_events_only(conn, plan, now_ms)
        else:
            value_keys = sorted(key for key in plan.trait_refs if kept.get(key) is not None)
            matching, profiles = _count_every_profile(conn, plan, now_ms, value_keys)
        return Preview(matching=matching, profiles=profiles, unkept_events=unkept)
    finally:
        conn.close()


def _stream_rows(conn: sqlite3.Connection, plan: Plan) -> dict[str, dict[str, bytes]]:
    return {
        stream.spec.id: dict(
            conn.execute(
                "SELECT profile_id, buckets FROM engage_buckets WHERE stream_id = ?",
                (stream.spec.id,),
            )
        )
        for stream in plan.streams
    }


def _count_events_only(conn: sqlite3.Connection, plan: Plan, now_ms: int) -> tuple[int, int]:
    rows = _stream_rows(conn, plan)
    streams = _Streams(rows)
    ctx = Ctx(_Profile(streams), now_ms)
    (profiles,) = conn.execute("SELECT count(*) FROM engage_profiles").fetchone()
    with_events = set().union(*rows.values())
    evaluate = plan.evaluate
    matching = 0
    for profile_id in with_events:
        streams.profile_id = profile_id
        if evaluate(ctx):
            matching += 1
    streams.profile_id = ""  # no rows: the answer of every profile without these events
    if profiles > len(with_events) and evaluate(ctx):
        matching += profiles - len(with_events)
    return matching, profiles


def _count_every_profile(
    conn: sqlite3.Connection, plan: Plan, now_ms: int, value_keys: list[str]
) -> tuple[int, int]:
    streams = _Streams(_stream_rows(conn, plan))
    state = _Profile(streams)
    ctx = Ctx(state, now_ms)
    evaluate = plan.evaluate
    read = _head_reader(sorted(plan.trait_refs), value_keys)
    matching = profiles = 0
    for profile_id, blob in conn.execute("SELECT profile_id, state FROM engage_profiles"):
        state.traits, ctx.values = read(blob)
        streams.profile_id = profile_id
        profiles += 1
        if evaluate(ctx):
            matching += 1
    return matching, profiles


def _preview_accounts(
    conn: sqlite3.Connection, plan: Plan, now_ms: int, unkept: tuple[str, ...]
) -> Preview:
    matching = accounts = 0
    for group_id, blob in conn.execute("SELECT group_id, state FROM engage_accounts").fetchall():
        members = []
        for (profile_id,) in conn.execute(MEMBERS, (group_id,)).fetchall():
            row = conn.execute(
                "SELECT state FROM engage_profiles WHERE profile_id = ?", (profile_id,)
            ).fetchone()
            if row is None:
                continue
            member = decode_profile(row[0])
            for stream_id, buckets in conn.execute(
                "SELECT stream_id, buckets FROM engage_buckets WHERE profile_id = ?",
                (profile_id,),
            ):
                member.streams[stream_id] = decode_buckets(buckets)
            members.append(Ctx(member, now_ms, member.values))
        account = decode_account(blob)
        accounts += 1
        if plan.evaluate(Ctx(account, now_ms, account.values, members=members)):
            matching += 1
    return Preview(matching=matching, profiles=accounts, unkept_events=unkept)
