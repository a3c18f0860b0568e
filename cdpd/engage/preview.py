"""`cdpd audiences preview`: how many profiles (or accounts) a query matches now, saving
nothing. The query is compiled like a definition and evaluated over every stored state, read
through its own read-only connection; event chains that no configured definition keeps have no
aggregates yet, so they count as no events, and the answer says which they were."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec

from cdpd.engage.catalog import Catalog
from cdpd.engage.evaluation import Ctx, Plan
from cdpd.engage.tables import decode_account, decode_profile


class _Profile(msgspec.Struct):
    """The parts of a stored state a preview reads; the buckets of each stream stay encoded
    until a plan asks for that stream (most previews read one or two of many)."""

    traits: dict[str, Any] = {}
    values: dict[str, Any] = {}
    streams: dict[str, msgspec.Raw] = {}


class _TraitsOnly(msgspec.Struct):
    traits: dict[str, Any] = {}
    values: dict[str, Any] = {}


_decode_buckets = msgspec.msgpack.Decoder(dict[int, Any]).decode


class _Streams:
    """`state.streams` as a plan reads it: `get(stream_id)` decodes that stream on demand."""

    __slots__ = ("raw",)

    def __init__(self, raw: dict[str, msgspec.Raw]) -> None:
        self.raw = raw

    def get(self, stream_id: str) -> dict[int, Any] | None:
        raw = self.raw.get(stream_id)
        return None if raw is None else _decode_buckets(raw)


class Preview(msgspec.Struct, frozen=True):
    matching: int
    profiles: int  # profiles evaluated (accounts, for an account audience)
    # Event chains of the query that no configured definition keeps: counted as no events.
    unkept_events: tuple[str, ...]


def preview(path: str | Path, plan: Plan, kept: Catalog, now_ms: int) -> Preview:
    """How many profiles match a query now, saving nothing: the plan is evaluated over every
    stored profile's state (with the values of the configured definitions it may read).
    Synchronous and read-only; run it in a thread from async code."""
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
        matching = profiles = 0
        evaluate = plan.evaluate
        ctx = Ctx(None, now_ms)
        if plan.streams:
            decode = msgspec.msgpack.Decoder(_Profile).decode
            for (blob,) in conn.execute("SELECT state FROM engage_profiles"):
                state = decode(blob)
                state.streams = _Streams(state.streams)  # type: ignore[assignment]
                ctx.state = state
                ctx.values = state.values
                profiles += 1
                matching += bool(evaluate(ctx))
        else:
            decode_traits = msgspec.msgpack.Decoder(_TraitsOnly).decode
            for (blob,) in conn.execute("SELECT state FROM engage_profiles"):
                traits_only = decode_traits(blob)
                ctx.state = traits_only
                ctx.values = traits_only.values
                profiles += 1
                matching += bool(evaluate(ctx))
        return Preview(matching=matching, profiles=profiles, unkept_events=unkept)
    finally:
        conn.close()


def _preview_accounts(
    conn: sqlite3.Connection, plan: Plan, now_ms: int, unkept: tuple[str, ...]
) -> Preview:
    matching = accounts = 0
    for group_id, blob in conn.execute("SELECT group_id, state FROM engage_accounts").fetchall():
        members = [
            Ctx(state, now_ms, state.values)
            for state in (
                decode_profile(row[0])
                for row in conn.execute(
                    "SELECT p.state FROM engage_links l JOIN engage_profiles p USING (profile_id)"
                    " WHERE l.group_id = ?",
                    (group_id,),
                )
            )
        ]
        account = decode_account(blob)
        accounts += 1
        if plan.evaluate(Ctx(account, now_ms, account.values, members=members)):
            matching += 1
    return Preview(matching=matching, profiles=accounts, unkept_events=unkept)
