"""`cdpd profiles show TYPE:VALUE` and `cdpd profiles explain TYPE:VALUE`: a profile as the
identity store holds it, and why its identifiers are one profile.

cli.py hands these over; the queries are in `cdpd.identity.reads`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from cdpd.config import Config, identity_path
from cdpd.identity import reads, store
from cdpd.identity.identifiers import Rules, extract

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
UNMERGE_TIMEOUT_S = 120
_payload = msgspec.json.Decoder(dict[str, Any])


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = commands.add_parser("profiles", help="look at identity profiles")
    profile_commands = parser.add_subparsers(dest="profiles_command", required=True)
    for name, help_text in (
        ("show", "identifiers, traits with their sources, recent events, merges"),
        ("explain", "why these identifiers are one profile"),
    ):
        command = profile_commands.add_parser(name, parents=[common], help=help_text)
        command.add_argument("identifier", help="TYPE:VALUE, e.g. user_id:123 or email:a@b.c")
        command.add_argument("--accounts", action="store_true", help="an account (group_id:...)")
        command.add_argument("--json", action="store_true", help="print one JSON object")
    show = profile_commands.choices["show"]
    show.add_argument("-n", type=int, default=10, help="recent events to list (default 10)")
    unmerge = profile_commands.add_parser(
        "unmerge",
        parents=[common],
        help="split an identifier off its profile (asks the running daemon)",
    )
    unmerge.add_argument("identifier", help="TYPE:VALUE of the identifier to split off")
    unmerge.add_argument("--accounts", action="store_true", help="an account identifier")
    unmerge.add_argument("--url", help="the daemon's base URL (default: from [server])")


def run(cfg: Config, args: argparse.Namespace) -> int:
    if cfg.identity is None:
        print("cdpd: identity resolution is not configured ([identity])", file=sys.stderr)
        return EXIT_USAGE
    kind, sep, value = args.identifier.partition(":")
    if not sep or not kind or not value:
        print(f"cdpd: expected TYPE:VALUE, got {args.identifier!r}", file=sys.stderr)
        return EXIT_USAGE
    if args.profiles_command == "unmerge":
        return _unmerge(cfg, args)
    if cfg.storage.backend == "sqlite" and not identity_path(cfg).exists():
        print(f"cdpd: no identity store at {identity_path(cfg)}", file=sys.stderr)
        return EXIT_FAILURE
    collection = "accounts" if args.accounts or kind == "group_id" else "users"
    work = _show if args.profiles_command == "show" else _explain
    try:
        found = asyncio.run(_with_store(cfg, work, collection, kind, value, args))
    except LookupError as exc:
        print(f"cdpd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if found is None:
        print(f"cdpd: no profile has {kind}:{value}", file=sys.stderr)
        return EXIT_FAILURE
    print(msgspec.json.encode(found).decode() if args.json else _format(found))
    return EXIT_OK


def _unmerge(cfg: Config, args: argparse.Namespace) -> int:
    """The daemon owns the identity graph, so the unmerge happens there (admin endpoint)."""
    token = cfg.admin.resolved_token()
    if token is None:
        print("cdpd: unmerge needs the admin token ([admin] token or token_env)", file=sys.stderr)
        return EXIT_USAGE
    collection = "accounts" if args.accounts else "users"
    body = msgspec.json.encode({"identifier": args.identifier, "collection": collection})
    request = urllib.request.Request(  # noqa: S310 (the daemon's own http(s) URL)
        (args.url or cfg.server.base_url).rstrip("/") + "/admin/profiles/unmerge",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=UNMERGE_TIMEOUT_S) as response:  # noqa: S310
            answer = msgspec.json.decode(response.read())
    except urllib.error.HTTPError as exc:
        detail = msgspec.json.decode(exc.read() or b"{}")
        print(f"cdpd: unmerge refused: {detail.get('message', exc.reason)}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"cdpd: cannot reach the daemon: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{args.identifier} split off; its former identifiers are now in:")
    for profile in answer["profiles"]:
        print(f"  {profile}")
    return EXIT_OK


async def _with_store(
    cfg: Config, work: Any, collection: str, kind: str, value: str, args: argparse.Namespace
) -> dict[str, Any] | None:
    async with (
        _store_files(cfg) as (identity_file, messages_file),
        store.connect_reader(identity_file) as conn,
    ):
        await reads.attach_outbox(conn, messages_file)
        pid = await reads.find(conn, collection, kind, value)
        if pid is None:
            return None
        result: dict[str, Any] = await work(cfg, conn, pid, args)
        return result


@asynccontextmanager
async def _store_files(cfg: Config) -> AsyncIterator[tuple[Path, Path]]:
    """The identity store and the messages it resolved: this machine's, or on the JetStream
    backend the newest snapshot in the cluster (no message payloads: no recent events)."""
    if cfg.storage.backend == "sqlite":
        yield identity_path(cfg), cfg.storage.outbox_path
        return
    from cdpd.cluster.profile_reads import downloaded  # the cluster's client, only here

    async with downloaded(cfg) as files:
        yield files


async def _show(
    cfg: Config, conn: aiosqlite.Connection, pid: str, args: argparse.Namespace
) -> dict[str, Any]:
    profile = await reads.profile(conn, pid)
    assert profile is not None
    return {
        "segment_id": pid,
        "collection": profile.collection,
        "created_at": profile.created_at,
        "first_message_id": profile.first_message_id,
        "identifiers": [
            {
                "type": r.type,
                "id": r.id,
                "first_seen_at": r.created_at,
                "seq": r.seq,
                "first_message_id": r.first_message_id,
                "source_id": r.source_id,
            }
            for r in await reads.external_ids(conn, pid)
        ],
        "traits": [
            {"name": t.name, "value": t.value, "source_id": t.source_id, "updated_at": t.updated_at}
            for t in await reads.traits(conn, pid)
        ],
        "recent_events": [
            {
                "seq": r.seq,
                "message_id": r.message_id,
                "type": r.type,
                "received_at": r.received_at,
                "source_id": r.source_id,
            }
            for r in await reads.resolved(conn, pid, limit=args.n)
        ],
        "merges": [await _merge(cfg, conn, m) for m in await reads.merges(conn, pid)],
    }


async def _merge(cfg: Config, conn: aiosqlite.Connection, merge: reads.MergeRow) -> dict[str, Any]:
    return {
        "merged_profile": merge.profile_id,
        "into": merge.into_profile_id,
        "at": merge.merged_at,
        "message": {"seq": merge.seq, "message_id": merge.message_id, "source_id": merge.source_id},
        "carried": await _carried(cfg, conn, merge.seq),
    }


async def _carried(cfg: Config, conn: aiosqlite.Connection, seq: int) -> list[str] | None:
    """The identifiers a message carried (None once the outbox no longer holds it)."""
    text = await reads.payload(conn, seq)
    if text is None:
        return None
    found = extract(_payload.decode(text), Rules(cfg.identity))
    return [f"{t}:{v}" for t, v in [*found.users, *found.accounts]]


async def _explain(
    cfg: Config, conn: aiosqlite.Connection, pid: str, _: argparse.Namespace
) -> dict[str, Any]:
    """Each identifier with the message that attached it and what else that message carried
    (the evidence that joined them), each merge with its message, and what was kept out."""
    steps = []
    for row in sorted(await reads.external_ids(conn, pid), key=lambda r: (r.seq, r.type, r.id)):
        steps.append(
            {
                "identifier": f"{row.type}:{row.id}",
                "attached_by": {
                    "seq": row.seq,
                    "message_id": row.first_message_id,
                    "source_id": row.source_id,
                    "at": row.created_at,
                },
                "message_carried": await _carried(cfg, conn, row.seq),
            }
        )
    return {
        "segment_id": pid,
        "identifiers": steps,
        "merges": [await _merge(cfg, conn, m) for m in await reads.merges(conn, pid)],
        "kept_out": [
            {"seq": r.seq, "message_id": r.message_id, "demoted": r.demoted}
            for r in await reads.demotions(conn, pid)
        ],
    }


def _format(found: dict[str, Any]) -> str:
    lines = [f"profile {found['segment_id']}"]
    if "traits" in found:
        lines.append(f"created   {found['created_at']} by message {found['first_message_id']}")
        lines.append("identifiers")
        lines += [
            f"  {i['type']}:{i['id']}  first seen {i['first_seen_at']}"
            f" (message {i['first_message_id']}, seq {i['seq']}, {i['source_id']})"
            for i in found["identifiers"]
        ]
        lines.append("traits")
        lines += [
            f"  {t['name']} = {msgspec.json.encode(t['value']).decode()}"
            f"  ({t['source_id']}, {t['updated_at']})"
            for t in found["traits"]
        ] or ["  (none)"]
        lines.append("recent events")
        lines += [
            f"  {e['received_at']}  {e['type']:<9} {e['message_id']} (seq {e['seq']})"
            for e in found["recent_events"]
        ] or ["  (none)"]
    else:
        lines.append("identifiers, in the order they joined")
        for step in found["identifiers"]:
            by = step["attached_by"]
            carried = step["message_carried"]
            evidence = (
                "(message no longer in the outbox)"
                if carried is None
                else "carrying " + ", ".join(carried)
            )
            lines.append(
                f"  {step['identifier']}: message {by['message_id']} (seq {by['seq']},"
                f" {by['at']}) {evidence}"
            )
    lines.append("merges")
    for merge in found["merges"]:
        carried = merge["carried"]
        evidence = "" if carried is None else ", carrying " + ", ".join(carried)
        lines.append(
            f"  {merge['merged_profile']} merged at {merge['at']} by message"
            f" {merge['message']['message_id']} (seq {merge['message']['seq']}{evidence})"
        )
    if not found["merges"]:
        lines.append("  (none)")
    if "kept_out" in found:
        lines.append("kept out by limits (demoted)")
        for kept in found["kept_out"]:
            ids = ", ".join(f"{d['type']}:{d['id']}" for d in kept["demoted"])
            lines.append(f"  {ids} from message {kept['message_id']} (seq {kept['seq']})")
        if not found["kept_out"]:
            lines.append("  (none)")
    return "\n".join(lines)
