"""`cdpd regulations create|list|show|verify`: argument parsing and output; the work is in the
regulation modules.

`create` writes the regulation into the outbox with a connection of its own, as the admin API
would; a running daemon takes it up within `POLL_INTERVAL_S` (suppression, then deletion).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from pathlib import Path
from typing import Any

import msgspec

from cdpd import config
from cdpd.delivery.replay import in_transaction
from cdpd.ingest.errors import ApiError
from cdpd.model.timestamps import now_ms
from cdpd.outbox import schema
from cdpd.privacy import regulations_proof, regulations_store
from cdpd.privacy.regulations import REGULATION_TYPES, STATUSES
from cdpd.privacy.regulations_api import decode_request, new_regulation
from cdpd.privacy.regulations_store import RegulationView

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
COMMAND = "regulations"


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        COMMAND, parents=[common], help="suppress and delete users (Segment's regulations)"
    )
    sub = parser.add_subparsers(dest="regulations_command", required=True)
    create = sub.add_parser("create", parents=[common], help="create a regulation")
    create.add_argument("type", choices=REGULATION_TYPES, metavar="TYPE", help="e.g. SUPPRESS_ONLY")
    create.add_argument("user_ids", nargs="*", metavar="USER_ID", help="the users' userId values")
    create.add_argument(
        "--from-file", help="user ids, one a line ('-': standard input), besides those given"
    )
    create.add_argument("--source", help="only this source (default: every source)")
    listing = sub.add_parser("list", parents=[common], help="regulations, newest first")
    listing.add_argument("--status", choices=STATUSES, help="only regulations in this status")
    listing.add_argument("--source", help="only this source's regulations")
    listing.add_argument("-n", type=int, default=50, help="how many (default 50)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = sub.add_parser("show", parents=[common], help="a regulation and each of its targets")
    show.add_argument("regulation_id", help="the regulation's id")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    verify = sub.add_parser(
        "verify",
        parents=[common],
        help="search every store for the regulation's users: exit 0 when none holds them",
    )
    verify.add_argument("regulation_id", help="the regulation's id")


def run(cfg: config.Config, args: argparse.Namespace) -> int:
    command: str = args.regulations_command
    if cfg.storage.backend == "jetstream":
        return _on_cluster(cfg, args)
    if command == "create":
        return _create(cfg, args)
    path = cfg.storage.outbox_path
    if not path.exists():
        print(f"cdpd: there is no outbox at {path} yet", file=sys.stderr)
        return EXIT_FAILURE
    if command == "list":
        return _list(path, args)
    if command == "verify":
        return _verify(cfg, path, args)
    return _show(path, args)


def _on_cluster(cfg: config.Config, args: argparse.Namespace) -> int:
    """The same commands against the cluster's regulations bucket (`verify` searches the
    SQLite backend's stores, so it is not offered)."""
    from cdpd.cluster import regulation_commands as cluster
    from cdpd.cluster.connect import ClusterUnreachable

    command: str = args.regulations_command
    if command == "verify":
        print(
            "cdpd: regulations verify is not available on the JetStream backend;"
            " `cdpd regulations show` gives each target's outcome (docs/scaling.md)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        if command == "create":
            new = _new_regulation(cfg, args)
            if new is None:
                return EXIT_USAGE
            asyncio.run(cluster.create(cfg, new))
            print(new.id)
            return EXIT_OK
        if command == "list":
            found = asyncio.run(cluster.listing(cfg, args.status, args.source, args.n))
            return _print_list(found, args)
        return _print_show(asyncio.run(cluster.show(cfg, args.regulation_id)), args)
    except (cluster.NoRegulations, ClusterUnreachable) as exc:
        print(f"cdpd: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _create(cfg: config.Config, args: argparse.Namespace) -> int:
    new = _new_regulation(cfg, args)
    if new is None:
        return EXIT_USAGE
    asyncio.run(_insert(cfg.storage.outbox_path, new))
    print(new.id)
    return EXIT_OK


def _new_regulation(
    cfg: config.Config, args: argparse.Namespace
) -> regulations_store.NewRegulation | None:
    """The regulation asked for; None (and why, on stderr) when the request is wrong."""
    users = list(args.user_ids)
    if args.from_file:
        text = sys.stdin.read() if args.from_file == "-" else Path(args.from_file).read_text()
        users += [line.strip() for line in text.splitlines() if line.strip()]
    if args.source is not None and args.source not in {s.name for s in cfg.sources}:
        print(f"cdpd: no source is named {args.source!r}", file=sys.stderr)
        return None
    body = {"regulationType": args.type, "subjectType": "USER_ID", "subjectIds": users}
    try:
        asked = decode_request(msgspec.json.encode(body))
    except ApiError as exc:
        print(f"cdpd: {exc.message}", file=sys.stderr)
        return None
    return new_regulation(cfg, asked, args.source, now_ms())


async def _insert(path: Path, new: regulations_store.NewRegulation) -> None:
    async with schema.connect(path) as conn:
        await in_transaction(conn, functools.partial(regulations_store.insert, new=new))


def _list(path: Path, args: argparse.Namespace) -> int:
    async def read() -> list[RegulationView]:
        async with schema.connect(path, readonly=True) as conn:
            return await regulations_store.listing(
                conn, status=args.status, source=args.source, after_id=None, count=args.n
            )

    return _print_list(asyncio.run(read()), args)


def _print_list(regulations: list[RegulationView], args: argparse.Namespace) -> int:
    for found in regulations:
        if args.json:
            print(msgspec.json.encode(found).decode())
        else:
            print(
                f"{found.id}  {found.regulationType:<29}  {found.overallStatus:<15}"
                f"  {found.subjectCount:>5} users  {found.sourceId or 'every source'}"
                f"  {found.createdAt}"
            )
    return EXIT_OK


def _show(path: Path, args: argparse.Namespace) -> int:
    async def read() -> RegulationView | None:
        async with schema.connect(path, readonly=True) as conn:
            return await regulations_store.show(conn, args.regulation_id)

    return _print_show(asyncio.run(read()), args)


def _print_show(found: RegulationView | None, args: argparse.Namespace) -> int:
    if found is None:
        print(f"cdpd: no regulation has the id {args.regulation_id!r}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(msgspec.json.encode(found).decode())
        return EXIT_OK
    print(f"regulation  {found.id}")
    print(f"type        {found.regulationType} ({found.subjectCount} users)")
    print(f"source      {found.sourceId or 'every source'}")
    print(f"status      {found.overallStatus}")
    print(f"created     {found.createdAt}")
    print(f"finished    {found.finishedAt or '-'}")
    if found.targets:
        print(f"\n{'target':<32} {'status':<14} {'rows removed':>12} {'attempts':>8}  last error")
    for target in found.targets:
        print(
            f"{target.target:<32} {target.status:<14} {target.rowsRemoved:>12}"
            f" {target.attempts:>8}  {target.lastError or ''}"
        )
    return EXIT_OK


def _verify(cfg: config.Config, path: Path, args: argparse.Namespace) -> int:
    async def search() -> tuple[bool, dict[str, Any]]:
        async with schema.connect(path, readonly=True) as conn:
            if await regulations_store.show(conn, args.regulation_id) is None:
                return False, {}
            users = await regulations_store.subjects(conn, args.regulation_id)
            outbox = await regulations_proof.outbox_mentions(conn, users)
        stages = {
            "identity": await regulations_proof.store_mentions(config.identity_path(cfg), users),
            "engage": await regulations_proof.store_mentions(config.engage_path(cfg), users),
        }
        warehouses = await regulations_proof.warehouse_mentions(cfg, users)
        files = await asyncio.to_thread(regulations_proof.file_mentions, cfg, users)
        return True, {"outbox": outbox, "stages": stages, "warehouses": warehouses, "files": files}

    known, found = asyncio.run(search())
    if not known:
        print(f"cdpd: no regulation has the id {args.regulation_id!r}", file=sys.stderr)
        return EXIT_FAILURE
    held = [f"outbox {table}: {n} rows" for table, n in found["outbox"].items()]
    searched = {name: tables for name, tables in found["stages"].items() if tables is not None}
    for name, tables in searched.items():
        held += [f"{name} {table}: {n} rows" for table, n in tables.items()]
    for warehouse, tables in found["warehouses"].items():
        held += [f"warehouse {warehouse} {table}: {n} rows" for table, n in tables.items()]
    held += [f"file {name}: {n} lines" for name, n in found["files"].items() if n]
    stores = 1 + len(searched) + len(found["warehouses"]) + len(found["files"])
    if not held:
        print(f"none of the regulation's users is held anywhere ({stores} stores searched)")
        return EXIT_OK
    print("\n".join(held))
    return EXIT_FAILURE
