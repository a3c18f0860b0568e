"""`cdpd audiences preview|list|show`: argument parsing and output; the work is in preview.py
and the store."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from cdpd import config
from cdpd.engage import catalog
from cdpd.engage.plan import compile_query
from cdpd.engage.preview import preview
from cdpd.engage.settings import definition_sources
from cdpd.engage.store import EngageStore, Summary
from cdpd.engage.syntax import QueryError
from cdpd.model.timestamps import format_ms, now_ms

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
COMMANDS = ("audiences",)


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    audiences = commands.add_parser(
        "audiences", parents=[common], help="Engage audiences and computed traits"
    )
    sub = audiences.add_subparsers(dest="audiences_command", required=True)
    previewing = sub.add_parser(
        "preview", parents=[common], help="how many profiles a query matches now (saves nothing)"
    )
    previewing.add_argument("query", help="a query in Segment's query language")
    previewing.add_argument("--json", action="store_true", help="print one JSON object")
    listing = sub.add_parser("list", parents=[common], help="every definition, size and changes")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = sub.add_parser("show", parents=[common], help="one definition and its latest changes")
    show.add_argument("key", help="an audience's or computed trait's key")
    show.add_argument("-n", type=int, default=20, help="how many latest changes (default 20)")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    resync = sub.add_parser(
        "resync", parents=[common], help="send every member (or value) to a destination again"
    )
    resync.add_argument("key", help="an audience's or computed trait's key")
    resync.add_argument("--destination", required=True, help="one of its destinations")


def run(cfg: config.Config, args: argparse.Namespace) -> int:
    path = config.engage_path(cfg)
    if args.audiences_command == "preview":
        return _preview(cfg, path, args)
    if not path.exists():
        print(f"cdpd: there is no Engage store at {path} yet", file=sys.stderr)
        return EXIT_FAILURE
    if args.audiences_command == "resync":
        return asyncio.run(_resync(cfg, path, args))
    if args.audiences_command == "list":
        return asyncio.run(_list(cfg, path, args))
    return asyncio.run(_show(cfg, path, args))


async def _resync(cfg: config.Config, path: Path, args: argparse.Namespace) -> int:
    connected = {(a.key, d.name) for a in cfg.audiences for d in a.destinations}
    connected |= {(t.key, d.name) for t in cfg.computed_traits for d in t.destinations}
    if (args.key, args.destination) not in connected:
        print(
            f"cdpd: {args.key!r} is not sent to a destination named {args.destination!r} "
            "in the config",
            file=sys.stderr,
        )
        return EXIT_USAGE
    store = await EngageStore.open(path)
    try:
        known = await store.resync(args.key, args.destination)
    finally:
        await store.close()
    state = "" if known else " (it had not been synced yet)"
    print(f"{args.key} -> {args.destination}: the next sync sends every member again{state}")
    return EXIT_OK


def _preview(cfg: config.Config, path: Path, args: argparse.Namespace) -> int:
    try:
        plan = compile_query(args.query)
    except QueryError as exc:
        print(f"cdpd: the query does not parse: {exc.render(args.query)}", file=sys.stderr)
        return EXIT_USAGE
    if plan.result != "boolean":
        print("cdpd: a preview needs a condition, such as event('x').count() >= 1", file=sys.stderr)
        return EXIT_USAGE
    if not path.exists():
        print(f"cdpd: there is no Engage store at {path} yet", file=sys.stderr)
        return EXIT_FAILURE
    kept = catalog.build(definition_sources(cfg.audiences, cfg.computed_traits))
    started = time.perf_counter()
    result = preview(path, plan, kept, now_ms())
    elapsed_ms = (time.perf_counter() - started) * 1000
    if args.json:
        out = {**msgspec.to_builtins(result), "elapsed_ms": round(elapsed_ms, 1)}
        print(msgspec.json.encode(out).decode())
        return EXIT_OK
    what = "accounts" if plan.account else "profiles"
    print(f"{result.matching} of {result.profiles} {what} match ({elapsed_ms:.0f} ms)")
    if result.unkept_events:
        print(
            "note: no configured definition keeps these event conditions yet, so they counted "
            "as no events: " + ", ".join(result.unkept_events)
        )
    return EXIT_OK


async def _summaries(cfg: config.Config, path: Path) -> list[Summary | None]:
    store = await EngageStore.open(path)
    try:
        keys = [a.key for a in cfg.audiences] + [t.key for t in cfg.computed_traits]
        return [await store.summary(key) for key in keys]
    finally:
        await store.close()


async def _list(cfg: config.Config, path: Path, args: argparse.Namespace) -> int:
    for summary in await _summaries(cfg, path):
        if summary is None:
            continue
        if args.json:
            print(msgspec.json.encode(summary).decode())
            continue
        last = _when(summary.last_change_at_ms)
        print(
            f"{summary.key:30} {summary.kind:15} size {summary.size:8}  entries "
            f"{summary.entries:8}  exits {summary.exits:8}  values {summary.computed:8}  "
            f"last change {last}"
        )
    return EXIT_OK


async def _show(cfg: config.Config, path: Path, args: argparse.Namespace) -> int:
    store = await EngageStore.open(path)
    try:
        store.use(catalog.build(definition_sources(cfg.audiences, cfg.computed_traits)))
        summary = await store.summary(args.key)
        if summary is None:
            print(f"cdpd: no audience or computed trait has the key {args.key!r}", file=sys.stderr)
            return EXIT_FAILURE
        latest = await store.changes(args.key, after_seq=0, limit=1_000_000)
        latest = latest[-args.n :] if args.n > 0 else []
    finally:
        await store.close()
    if args.json:
        out = {
            **msgspec.to_builtins(summary),
            "changes": [msgspec.to_builtins(r) for r in latest],
        }
        print(msgspec.json.encode(out).decode())
        return EXIT_OK
    print(f"{summary.key} ({summary.kind}): {summary.query}")
    print(
        f"  created {_when(summary.created_at_ms)}, last computed {_when(summary.computed_at_ms)}"
    )
    print(
        f"  size {summary.size}, entries {summary.entries}, exits {summary.exits}, "
        f"values computed {summary.computed}"
    )
    for r in latest:
        print(
            f"  #{r.seq} {r.collection} {r.id} {r.change.change} "
            f"{msgspec.json.encode(r.change.value).decode()}"
        )
    return EXIT_OK


def _when(epoch_ms: int | None) -> str:
    return "never" if epoch_ms is None else format_ms(epoch_ms)
