"""`cdpd cluster stats`: what the JetStream backend's streams hold and how far their consumers
are, read from the cluster (any node's config will do)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

import msgspec

from cdpd.config import Config

if TYPE_CHECKING:
    from cdpd.cluster.status import ClusterStatus

COMMAND = "cluster"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    cluster = commands.add_parser(
        COMMAND, parents=[common], help="inspect the JetStream backend's streams"
    )
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True)
    stats = cluster_commands.add_parser(
        "stats", parents=[common], help="messages, bytes and sequences per stream; consumer lag"
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object")


def run(config: Config, args: argparse.Namespace) -> int:
    if config.storage.backend != "jetstream":
        print('cdpd: the config\'s [storage] backend is not "jetstream"', file=sys.stderr)
        return EXIT_USAGE
    from cdpd.cluster.connect import ClusterUnreachable  # the NATS client, only when needed

    try:
        found = asyncio.run(_read(config))
    except ClusterUnreachable as exc:
        print(f"cdpd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(msgspec.json.encode(found).decode() if args.json else _text(found))
    return EXIT_OK


async def _read(config: Config) -> ClusterStatus:
    from cdpd.cluster import connect, status
    from cdpd.cluster.layout import Layout

    jetstream = config.storage.jetstream
    async with connect.connected(jetstream, name="cdpd cluster stats") as client:
        return await status.read(client.jetstream(), Layout.of(jetstream))


def _text(found: ClusterStatus) -> str:
    lines = []
    for s in found.streams:
        lines.append(
            f"{s.name}: {s.messages} messages, {s.bytes} bytes, seq {s.first_seq}..{s.last_seq},"
            f" {s.replicas} replicas, leader {s.leader or '-'}"
        )
        lines += [
            f"  consumer {c.name}: delivered to {c.delivered_seq}, acked to {c.ack_floor_seq},"
            f" {c.pending} pending, {c.ack_pending} awaiting ack"
            for c in s.consumers
        ]
    return "\n".join(lines) if lines else "no streams yet"
