"""Resolution does not depend on how the messages were batched or where it was restarted:
the identity store ends the same, and a graph loaded back from it is the graph in memory."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdpd.config import parse
from cdpd.identity import store
from cdpd.identity.graph import Graph
from cdpd.identity.identifiers import Rules
from cdpd.identity.stage import resolve_messages
from cdpd.model.timestamps import format_ms
from cdpd.outbox.consumers import Message

START_MS = 1_780_000_000_000
RULES = Rules(
    parse(
        '[identity]\nspace = "s"\naccess_tokens = ["t"]\n'
        '[[identity.identifiers]]\ntype = "anonymous_id"\nlimit = 2\n'
    ).identity
)
TABLES = {
    "profiles": "*",
    "external_ids": "*",
    "traits": "*",
    "links": "*",
    "resolutions": "*",
    "merges": "seq, message_id, source_id, collection, profile_id, into_profile_id, merged_at",
    "position": "*",
}
# Change numbers count write transactions, so they depend on where batches end: left out.
UNCOMPARED_COLUMNS = {"change_seq"}

users = st.sampled_from(["u1", "u2", "u3", "0", None])
anonymous = st.sampled_from(["a1", "a2", "a3", "a4", "shared", None])
emails = st.sampled_from(["e1@x.io", "e2@x.io", "team@x.io", None])
traits = st.dictionaries(
    st.sampled_from(["plan", "name", "email"]),
    st.one_of(st.none(), st.sampled_from(["", "pro", "free", "e1@x.io"]), st.integers(0, 3)),
    max_size=3,
)


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["identify", "track", "group", "alias", "page"]))
    payload: dict[str, Any] = {"type": kind, "messageId": "x"}
    for key, strategy in (("userId", users), ("anonymousId", anonymous)):
        value = draw(strategy)
        if value is not None:
            payload[key] = value
    email = draw(emails)
    if email is not None:
        payload["context"] = {"traits": {"email": email}}
    if kind in ("identify", "group"):
        payload["traits"] = draw(traits)
    if kind == "group":
        payload["groupId"] = draw(st.sampled_from(["g1", "g2"]))
    return payload


def messages_of(drawn: list[tuple[dict[str, Any], int]]) -> list[Message]:
    found, at_ms = [], START_MS
    for seq, (payload, gap_days) in enumerate(drawn, start=1):
        at_ms += gap_days * 86_400_000 + 1000
        found.append(
            Message(
                seq=seq,
                message_id=f"m{seq}",
                source="web",
                type=payload["type"],
                event=None,
                user_id=payload.get("userId"),
                anonymous_id=payload.get("anonymousId"),
                received_at=format_ms(at_ms),
                payload=msgspec.json.encode(payload).decode(),
            )
        )
    return found


def resolve_in_batches(path: Path, messages: list[Message], cuts: set[int]) -> Graph:
    """Resolve in batches ending at each cut; at every cut the stage "restarts": the graph is
    loaded back from the store, as after a crash."""
    graph, start = None, 0
    for end in [*sorted(c for c in cuts if 0 < c < len(messages)), len(messages)]:
        with store.connect(path) as conn:
            graph = store.load_graph(conn)
            assert store.position(conn) == start
            batch = messages[start:end]
            resolutions = resolve_messages(graph, RULES, batch)
            store.save_batch(conn, graph, resolutions, end)
        start = end
    assert graph is not None
    return graph


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(path) as conn:
        return {table: _compared(conn, table, columns) for table, columns in TABLES.items()}


def _compared(conn: sqlite3.Connection, table: str, columns: str) -> list[tuple[Any, ...]]:
    cursor = conn.execute(f"SELECT {columns} FROM {table}")
    kept = [i for i, d in enumerate(cursor.description) if d[0] not in UNCOMPARED_COLUMNS]
    rows = [tuple(row[i] for i in kept) for row in cursor.fetchall()]
    return sorted((r for r in rows if r[0] != "changes" or table != "position"), key=repr)


def graph_summary(graph: Graph) -> Any:
    return sorted(
        (
            p.id,
            graph.canonical(p.id),  # (the store flattens chains of merges)
            p.merges,
            sorted(p.identifiers.items()),
            sorted((k, msgspec.json.encode(t.value), t.seq) for k, t in p.traits.items()),
            sorted(p.links),
        )
        for p in graph.profiles.values()
    )


journeys = st.lists(st.tuples(payloads(), st.sampled_from([0, 0, 0, 8])), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(journeys, st.sets(st.integers(0, 40), max_size=6))
def test_batch_boundaries_and_restarts_change_nothing(
    drawn: list[tuple[dict[str, Any], int]], cuts: set[int]
) -> None:
    messages = messages_of(drawn)
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one.sqlite3", Path(tmp) / "many.sqlite3"
        single = resolve_in_batches(one, messages, set())
        batched = resolve_in_batches(many, messages, cuts)
        assert dump(one) == dump(many)
        assert graph_summary(single) == graph_summary(batched)

        with store.connect(one) as conn:
            assert graph_summary(store.load_graph(conn)) == graph_summary(single)


@settings(max_examples=60, deadline=None)
@given(journeys)
def test_no_identifier_is_owned_twice_and_user_ids_stay_within_their_limit(
    drawn: list[tuple[dict[str, Any], int]],
) -> None:
    graph = Graph()
    resolve_messages(graph, RULES, messages_of(drawn))
    for (collection, identifier), owner in graph.owners.items():
        profile = graph.profiles[owner]
        assert profile.merged_into is None
        assert profile.collection == collection
        assert identifier in profile.identifiers
    for profile in graph.profiles.values():
        assert profile.count("user_id", None) <= 1
        if profile.merged_into is not None:
            assert not profile.identifiers
            assert not profile.traits


@settings(max_examples=30, deadline=None)
@given(journeys)
def test_live_profile_counts_match_the_profiles(drawn: list[tuple[dict[str, Any], int]]) -> None:
    graph = Graph()
    resolve_messages(graph, RULES, messages_of(drawn))
    for collection in ("users", "accounts"):
        live = [
            p
            for p in graph.profiles.values()
            if p.collection == collection and p.merged_into is None
        ]
        assert graph.live[collection] == len(live)
