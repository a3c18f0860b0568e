"""The CLI's delivery commands on the JetStream backend (cdpd/cli.py sends them here when
`[storage] backend = "jetstream"`): the same output as on SQLite, from the cluster."""

from __future__ import annotations

import argparse
import asyncio
import sys

import msgspec

from cdpd import config
from cdpd.cli import EXIT_OK, EXIT_USAGE, _dead_line, _format_reports, _plural, _print_statuses
from cdpd.cluster import delivery_commands as cluster


def deliveries(cfg: config.Config, args: argparse.Namespace) -> int:
    """`cdpd deliveries` on the JetStream backend: the cluster's figures (docs/scaling.md)."""
    command = args.deliveries_command
    if command == "stats":
        reports = asyncio.run(cluster.stats(cfg))
        print(msgspec.json.encode(reports).decode() if args.json else _format_reports(reports))
        return EXIT_OK
    if command == "show":
        return _print_statuses(asyncio.run(cluster.show(cfg, args.message_id)), args)
    if command == "retry":
        destination = next((d for d in cfg.destinations if d.name == args.destination), None)
        if destination is None:
            print(f"cdpd: no destination is named {args.destination!r}", file=sys.stderr)
            return EXIT_USAGE
        waiting = asyncio.run(cluster.retry(cfg, destination))
        waiting_text = _plural(waiting, "waiting delivery", "waiting deliveries")
        print(f"circuit of {destination.name} closed; {waiting_text} marked due now")
        return EXIT_OK
    dead = asyncio.run(cluster.dead(cfg, args.destination, args.n))
    for entry in dead:
        print(msgspec.json.encode(entry).decode() if args.json else _dead_line(entry))
    if not dead:
        print("(no dead deliveries)", file=sys.stderr)
    return EXIT_OK


def replay_on_cluster(
    cfg: config.Config,
    destination: config.Destination,
    since: str | None,
    until: str,
    source: str | None,
) -> int:
    """`cdpd replay` on the JetStream backend: dead letters back (no `since`), or a replay job
    for the messages received in [since, until); how many were queued."""
    if since is None:
        return asyncio.run(cluster.replay_dead(cfg, destination))
    return asyncio.run(cluster.replay_range(cfg, destination, since, until, source))
