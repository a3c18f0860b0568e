"""`cdpd audiences preview`: how many profiles (or accounts) a query matches now, saving
nothing. The query is compiled like a definition and evaluated over every stored profile,
read through its own read-only connection. A query on traits reads only `engage_profiles`;
one on events also reads `engage_buckets`, decoding only the streams the query uses. Event
chains that no configured definition keeps have no buckets yet, so they count as no events,
and the answer says which they were."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec

from cdpd.engage.catalog import Catalog
from cdpd.engage.evaluation import Ctx, Plan
from cdpd.engage.tables import MEMBER_STATES, decode_account, decode_profile


class Preview(msgspec.Struct, frozen=True):
    matching: int
    profiles: int  # profiles evaluated (accounts, for an account audience)
    # Event chains of the query that no configured definition keeps: counted as no events.
    unkept_events: tuple[str, ...]


class _Profile(msgspec.Struct, array_like=True):
    """A stored `Head` as a plan reads it, with room for its streams."""

    traits: dict[str, Any]
    trait_times_ms: dict[str, int]
    identifiers: dict[str, list[str]]
    groups: list[str]
    values: dict[str, Any]
    streams: Any = None


_decode_profile_head = msgspec.msgpack.Decoder(_Profile).decode
_decode_streams = msgspec.msgpack.Decoder(dict[str, msgspec.Raw]).decode
_decode_buckets = msgspec.msgpack.Decoder(dict[int, Any]).decode
_NO_STREAMS: dict[str, msgspec.Raw] = {}


class _Streams:
    """`state.streams` as a plan reads it: `get(stream_id)` decodes that stream on demand."""

    __slots__ = ("raw",)

    def __init__(self, raw: dict[str, msgspec.Raw]) -> None:
        self.raw = raw

    def get(self, stream_id: str) -> dict[int, Any] | None:
        raw = self.raw.get(stream_id)
        return None if raw is None else _decode_buckets(raw)


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
        matching, profiles = _count(conn, plan, now_ms)
        return Preview(matching=matching, profiles=profiles, unkept_events=unkept)
    finally:
        conn.close()


def _count(conn: sqlite3.Connection, plan: Plan, now_ms: int) -> tuple[int, int]:
    evaluate = plan.evaluate
    ctx = Ctx(None, now_ms)
    matching = profiles = 0
    if not plan.streams:
        for (blob,) in conn.execute("SELECT state FROM engage_profiles"):
            head = _decode_profile_head(blob)
            ctx.state = head
            ctx.values = head.values
            profiles += 1
            if evaluate(ctx):
                matching += 1
        return matching, profiles
    streams = _Streams(_NO_STREAMS)
    for blob, buckets in conn.execute(
        "SELECT p.state, b.buckets FROM engage_profiles p "
        "LEFT JOIN engage_buckets b USING (profile_id)"
    ):
        head = _decode_profile_head(blob)
        streams.raw = _decode_streams(buckets) if buckets else _NO_STREAMS
        head.streams = streams
        ctx.state = head
        ctx.values = head.values
        profiles += 1
        if evaluate(ctx):
            matching += 1
    return matching, profiles


def _preview_accounts(
    conn: sqlite3.Connection, plan: Plan, now_ms: int, unkept: tuple[str, ...]
) -> Preview:
    matching = accounts = 0
    for group_id, blob in conn.execute("SELECT group_id, state FROM engage_accounts").fetchall():
        members = [
            Ctx(state, now_ms, state.values)
            for state in (
                decode_profile(head, buckets)
                for head, buckets in conn.execute(MEMBER_STATES, (group_id,))
            )
        ]
        account = decode_account(blob)
        accounts += 1
        if plan.evaluate(Ctx(account, now_ms, account.values, members=members)):
            matching += 1
    return Preview(matching=matching, profiles=accounts, unkept_events=unkept)
