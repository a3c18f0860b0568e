"""`cdpd privacy inbox|classify|inventory|scan`: argument parsing and output; the work is in
store.py and scan.py (on the JetStream backend: cdpd/cluster/privacy_commands.py). `classify`
writes the outbox file directly; a running daemon reads the inventory again within about a
second (on the JetStream backend, every node follows the bucket)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec

from cdpd import config
from cdpd.model.timestamps import format_ms, now_ms, parse_ms
from cdpd.outbox import schema
from cdpd.privacy import store
from cdpd.privacy.controls import field_problem
from cdpd.privacy.scan import ScanHit, scan

T = TypeVar("T")
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
CLASSES = ("red", "yellow", "green", "none")


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("privacy", parents=[common], help="personal data: find, classify")
    privacy = parser.add_subparsers(dest="privacy_command", required=True)
    inbox = privacy.add_parser(
        "inbox", parents=[common], help="fields seen and not classified, with suggested classes"
    )
    inbox.add_argument("--source", help="only this source")
    inbox.add_argument("--all", action="store_true", help="classified fields too")
    inbox.add_argument("--since", help="only fields last seen from this time (ISO-8601)")
    inbox.add_argument("--json", action="store_true", help="one JSON object per line")
    classify = privacy.add_parser(
        "classify", parents=[common], help="put a field in the inventory (none: take it out)"
    )
    classify.add_argument("field", help="a field path, e.g. properties.email or context.ip")
    classify.add_argument("class_", metavar="CLASS", choices=CLASSES, help=" | ".join(CLASSES))
    inventory = privacy.add_parser("inventory", parents=[common], help="the classified fields")
    inventory.add_argument("--json", action="store_true", help="one JSON object per line")
    scan_parser = privacy.add_parser(
        "scan", parents=[common], help="stored messages that hold red or unclassified fields"
    )
    scan_parser.add_argument("--since", help="only those received from this time (ISO-8601)")
    scan_parser.add_argument("--json", action="store_true", help="one JSON object per line")


def run(cfg: config.Config, args: argparse.Namespace) -> int:
    command = args.privacy_command
    if command == "classify":
        problem = field_problem(args.field)
        if problem is not None:
            print(f"cdpd: {problem}", file=sys.stderr)
            return EXIT_USAGE
    try:
        since = format_ms(parse_ms(args.since)) if getattr(args, "since", None) else None
    except ValueError as exc:
        print(f"cdpd: --since: expected an ISO-8601 time ({exc})", file=sys.stderr)
        return EXIT_USAGE
    if cfg.storage.backend == "jetstream":
        return _on_cluster(cfg, args, since)
    path = cfg.storage.outbox_path
    if command == "classify":
        return _classify(path, args.field, args.class_)
    if not path.exists():
        print(f"cdpd: there is no outbox at {path} yet", file=sys.stderr)
        return EXIT_FAILURE
    if command == "inbox":
        found = asyncio.run(
            _read(
                path,
                lambda c: store.inbox(
                    c, source=args.source, include_classified=args.all, since=since
                ),
            )
        )
        return _print_inbox(found, json=args.json)
    if command == "inventory":
        return _print_inventory(asyncio.run(_read(path, store.inventory)), json=args.json)
    return _scan(path, args, since)


def _on_cluster(cfg: config.Config, args: argparse.Namespace, since: str | None) -> int:
    """The same commands against the cluster's buckets (docs/scaling.md)."""
    from cdpd.cluster import privacy_commands  # the NATS client, only when needed

    command = args.privacy_command
    try:
        if command == "scan":
            asyncio.run(_print_scan(privacy_commands.scan(cfg, since), json=args.json))
            return EXIT_OK
        if command == "classify":
            chosen = None if args.class_ == "none" else args.class_
            asyncio.run(privacy_commands.classify(cfg, args.field, chosen))
            print(f"{args.field}: {chosen or 'not classified'}")
            return EXIT_OK
        if command == "inbox":
            found = asyncio.run(
                privacy_commands.inbox(
                    cfg, source=args.source, include_classified=args.all, since=since
                )
            )
            return _print_inbox(found, json=args.json)
        return _print_inventory(asyncio.run(privacy_commands.inventory(cfg)), json=args.json)
    except privacy_commands.ClusterUnreachable as exc:
        print(f"cdpd: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _classify(path: Path, field: str, class_: str) -> int:
    chosen = None if class_ == "none" else class_

    async def write() -> None:
        async with schema.connect(path) as conn:  # creates or migrates the outbox if need be
            await conn.execute("BEGIN IMMEDIATE")
            await store.classify(field, chosen, format_ms(now_ms()), "cli", conn)
            await conn.execute("COMMIT")

    asyncio.run(write())
    print(f"{field}: {chosen or 'not classified'}")
    return EXIT_OK


def _print_inbox(found: list[store.InboxField], *, json: bool) -> int:
    if json:
        for entry in found:
            print(msgspec.json.encode(entry).decode())
        return EXIT_OK
    if not found:
        print("(the inbox is empty)", file=sys.stderr)
        return EXIT_OK
    print(
        f"{'field':<36} {'suggested':<9} {'matcher':<24} {'source':<14} {'first seen':<24} "
        f"{'last seen':<24} sample"
    )
    for f in found:
        suggested = f.suggested_class or "-"
        matcher = f"{f.matcher} ({f.matched_on})" if f.matcher else "-"
        classified = f"  [classified {f.class_}]" if f.class_ else ""
        print(
            f"{f.field:<36} {suggested:<9} {matcher:<24} {f.source:<14} {f.first_seen:<24} "
            f"{f.last_seen:<24} {f.sample or '-'}{classified}"
        )
    return EXIT_OK


def _print_inventory(found: list[store.InventoryField], *, json: bool) -> int:
    if json:
        for entry in found:
            print(msgspec.json.encode(entry).decode())
        return EXIT_OK
    if not found:
        print("(nothing is classified)", file=sys.stderr)
        return EXIT_OK
    print(f"{'field':<40} {'class':<7} {'classified at':<24} by")
    for f in found:
        print(f"{f.field:<40} {f.class_:<7} {f.classified_at:<24} {f.classified_by}")
    return EXIT_OK


def _scan(path: Path, args: argparse.Namespace, since: str | None) -> int:
    async def run_scan() -> None:
        async with schema.connect(path, readonly=True) as conn:
            await _print_scan(scan(conn, await store.read_classes(conn), since), json=args.json)

    asyncio.run(run_scan())
    return EXIT_OK


async def _print_scan(hits: AsyncIterator[ScanHit], *, json: bool) -> None:
    """Each hit, then the counts on stderr."""
    held = {"red": 0, "unclassified": 0, "messages": 0}
    async for hit in hits:
        held["messages"] += 1
        held["red"] += bool(hit.red)
        held["unclassified"] += bool(hit.unclassified)
        print(msgspec.json.encode(hit).decode() if json else _format_hit(hit))
    print(
        f"{held['messages']} messages hold red or unclassified fields: {held['red']} red, "
        f"{held['unclassified']} unclassified",
        file=sys.stderr,
    )


def _format_hit(hit: ScanHit) -> str:
    parts = [f"{hit.received_at}  {hit.source:<14} {hit.message_id}"]
    if hit.red:
        parts.append(f"red: {', '.join(hit.red)}")
    if hit.unclassified:
        parts.append(f"unclassified: {', '.join(hit.unclassified)}")
    return "  ".join(parts)


async def _read(path: Path, query: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
    async with schema.connect(path, readonly=True) as conn:
        return await query(conn)
