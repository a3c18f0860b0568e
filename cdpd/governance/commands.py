"""`cdpd plans`, `cdpd violations` and `cdpd schema`: argument parsing and output; the work is
in plans.py, infer.py and store.py."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec

from cdpd import config
from cdpd.governance import infer, plans, store
from cdpd.model.timestamps import format_ms, now_ms, parse_when_ms
from cdpd.outbox import schema

T = TypeVar("T")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
COMMANDS = ("plans", "violations", "schema")


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    plans_parser = commands.add_parser("plans", parents=[common], help="tracking plans")
    plan_commands = plans_parser.add_subparsers(dest="plans_command", required=True)
    plan_commands.add_parser("check", parents=[common], help="load and compile every plan")
    infer = plan_commands.add_parser(
        "infer", parents=[common], help="print a starter plan (rule format) from a source's schema"
    )
    infer.add_argument("source", help="the source's name in the config")
    violations = commands.add_parser(
        "violations", parents=[common], help="tracking plan violations, grouped"
    )
    violations.add_argument("--source", help="only this source")
    violations.add_argument("--event", help="only this event (track) or name (page, screen)")
    violations.add_argument(
        "--since", help="only those received from this time (ISO-8601, or ago: 15m, 2h, 7d)"
    )
    violations.add_argument("--json", action="store_true", help="one JSON object per line")
    schema = commands.add_parser(
        "schema", parents=[common], help="the events, properties and traits a source sent"
    )
    schema.add_argument("source", help="the source's name in the config")
    schema.add_argument("--json", action="store_true", help="one JSON object per line")


def run(cfg: config.Config, args: argparse.Namespace) -> int:
    if args.command == "plans" and args.plans_command == "check":
        return _check(cfg)
    path = cfg.storage.outbox_path
    if not path.exists():
        print(f"cdpd: there is no outbox at {path} yet", file=sys.stderr)
        return EXIT_FAILURE
    if args.command == "violations":
        return _violations(path, args)
    if args.command == "schema":
        return _schema(path, args)
    if args.command == "plans" and args.plans_command == "infer":
        return _infer(path, args)
    raise AssertionError(f"unhandled command {args.command}")


def _violations(path: Path, args: argparse.Namespace) -> int:
    try:
        since = format_ms(parse_when_ms(args.since, now_ms())) if args.since else None
    except ValueError as exc:
        print(f"cdpd: --since: {exc}", file=sys.stderr)
        return EXIT_USAGE
    found = asyncio.run(
        _read(
            path,
            lambda conn: store.summarize_violations(
                conn, source=args.source, event=args.event, since=since
            ),
        )
    )
    if args.json:
        for entry in found:
            print(msgspec.json.encode(entry).decode())
        return EXIT_OK
    if not found:
        print("(no violations)", file=sys.stderr)
        return EXIT_OK
    print(
        f"{'source':<16} {'event':<24} {'field':<28} {'count':>7}  {'first seen':<24} "
        f"{'last seen':<24} sample message  violation"
    )
    for v in found:
        print(
            f"{v.source:<16} {v.event or '-':<24} {v.field:<28} {v.count:>7}  {v.first_seen:<24} "
            f"{v.last_seen:<24} {v.sample_message_id}  {v.violation_type}: {v.description}"
        )
    return EXIT_OK


def _schema(path: Path, args: argparse.Namespace) -> int:
    fields = asyncio.run(_read(path, lambda conn: store.source_schema(conn, args.source)))
    if args.json:
        for entry in fields:
            print(msgspec.json.encode(entry).decode())
        return EXIT_OK
    if not fields:
        print(f"(nothing seen from {args.source!r})", file=sys.stderr)
        return EXIT_OK
    print(f"{'type':<9} {'event':<28} {'field':<32} {'value type':<10} {'count':>8}  last seen")
    for f in fields:
        print(
            f"{f.type:<9} {f.event or '-':<28} {f.field or '(event)':<32} {f.value_type or '-':<10}"
            f" {f.count:>8}  {f.last_seen}"
        )
    return EXIT_OK


def _infer(path: Path, args: argparse.Namespace) -> int:
    fields = asyncio.run(_read(path, lambda conn: store.source_schema(conn, args.source)))
    if not fields:
        print(f"cdpd: nothing has been seen from {args.source!r}", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(infer.plan(fields))).decode() + "\n")
    return EXIT_OK


async def _read(path: Path, query: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
    async with schema.connect(path, readonly=True) as conn:
        return await query(conn)


def _check(cfg: config.Config) -> int:
    if not cfg.tracking_plans:
        print("no tracking plans are configured")
        return EXIT_OK
    try:
        loaded = plans.load_all(cfg.tracking_plans)
    except plans.PlanError as exc:
        print(f"cdpd: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for entry in cfg.tracking_plans:
        plan = loaded[entry.name]
        rules = sum(len(versions) for versions in plan.rules.values())
        users = [s.name for s in cfg.sources if s.tracking_plan == entry.name]
        print(
            f"{entry.name}: ok ({rules} rules, {len(plan.track_events())} track events; "
            f"sources: {', '.join(users) or 'none'}) from {entry.path}"
        )
    return EXIT_OK
