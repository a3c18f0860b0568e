"""`cdpd outbox stats|tail` and `cdpd rejects` on the JetStream backend (cdpd/cli.py sends them
here when `[storage] backend = "jetstream"`): the same options and output as on SQLite, read
from the cluster by cdpd/cluster/outbox_reads.py; what this backend does not keep is said."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from nats.js import JetStreamContext

from cdpd.cli import _human_bytes
from cdpd.cluster import outbox_reads
from cdpd.cluster.connect import ClusterUnreachable, connected
from cdpd.cluster.layout import Layout
from cdpd.config import Config
from cdpd.outbox import commands
from cdpd.outbox.reader import TailFilter

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")


def outbox(cfg: Config, args: argparse.Namespace) -> int:
    """`cdpd outbox stats` and `cdpd outbox tail`."""
    if args.outbox_command == "tail":
        return tail(cfg, args)
    try:
        found = _reading(cfg, "cdpd outbox stats", outbox_reads.stats)
    except (ClusterUnreachable, outbox_reads.NoStream) as exc:
        print(f"cdpd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(msgspec.json.encode(found).decode() if args.json else _stats_text(found))
    return EXIT_OK


def tail(cfg: Config, args: argparse.Namespace) -> int:
    if args.n < 0:
        print("cdpd: -n must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    only = TailFilter(source=args.source, type=args.type, event=args.event, user=args.user)

    async def printed(js: JetStreamContext, layout: Layout, _: list[str]) -> None:
        found, last_seq = await outbox_reads.tail(js, layout, args.n, only)
        for message in found:
            commands._print_json(message)
        if args.follow:
            async for message in outbox_reads.follow(js, layout, last_seq, only):
                commands._print_json(message)

    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends -f: not an error
            _reading(cfg, "cdpd outbox tail", printed)
    except (ClusterUnreachable, outbox_reads.NoStream) as exc:
        print(f"cdpd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def rejects(cfg: Config, args: argparse.Namespace) -> int:
    if args.n < 1:
        print("cdpd: -n must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.counts:
            return _print_counts(cfg, args)
        found = _reading(
            cfg,
            "cdpd rejects",
            lambda js, layout, _: outbox_reads.rejects(
                js, layout, args.n, args.source, args.reason
            ),
        )
    except ClusterUnreachable as exc:
        print(f"cdpd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for reject in found:
        print(commands._json(reject) if args.json else commands._reject_line(reject))
    if not found and not args.json:
        print("(no rejected messages)", file=sys.stderr)
    return EXIT_OK


def _print_counts(cfg: Config, args: argparse.Namespace) -> int:
    counts, counted = _reading(
        cfg, "cdpd rejects", lambda js, layout, _: outbox_reads.reject_counts(js, layout)
    )
    counts = [c for c in counts if commands._matches(c.source, c.reason_code, args)]
    for count in counts:
        print(commands._json(count) if args.json else commands._count_line(count))
    if not counts and not args.json:
        print("(no rejected messages)", file=sys.stderr)
    if counted >= outbox_reads.REJECTS_COUNTED:
        print(f"cdpd: note: the first {counted} rejects in the stream are counted", file=sys.stderr)
    return EXIT_OK


def _reading(
    cfg: Config, name: str, read: Callable[[JetStreamContext, Layout, list[str]], Awaitable[T]]
) -> T:
    jetstream = cfg.storage.jetstream

    async def connected_read() -> T:
        async with connected(jetstream, name=name) as client:
            return await read(client.jetstream(), Layout.of(jetstream), jetstream.servers)

    return asyncio.run(connected_read())


def _stats_text(stats: outbox_reads.ClusterOutboxStats) -> str:
    lines = [
        f"stream    {stats.stream} on {', '.join(stats.servers)} ({stats.replicas} replicas)",
        f"size      {_human_bytes(stats.stream_bytes)} ({stats.stream_bytes} bytes in the"
        " stream, on each replica)",
        f"messages  {stats.messages} (last seq {stats.last_seq}, first seq {stats.first_seq})",
        f"received  {stats.first_received_at or '-'} .. {stats.last_received_at or '-'}",
        "",
        f"{'source':<24} {'type':<10} {'messages':>10}",
        "(not counted on the JetStream backend: `cdpd outbox tail --source S --type T` lists them)",
        "",
        f"{'source':<24} {'rejected because':<24} {'count':>10}",
    ]
    lines += [f"{r.source or '-':<24} {r.reason_code:<24} {r.rejects:>10}" for r in stats.rejects]
    if not stats.rejects:
        lines.append("(no rejected messages)")
    if stats.rejects_counted >= outbox_reads.REJECTS_COUNTED:
        lines.append(f"(the first {stats.rejects_counted} rejects in the stream are counted)")
    lines += ["", f"{'consumer':<32} {'position':>10} {'behind':>10} {'seconds':>10}"]
    lines += [
        f"{c.name:<32} {c.seq:>10} {c.messages_behind:>10} {'-':>10}" for c in stats.consumers
    ]
    if stats.consumers:
        lines.append("(seconds behind are not kept on the JetStream backend)")
    else:
        lines.append("(no consumers)")
    return "\n".join(lines)
