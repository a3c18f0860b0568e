"""The `cdpd` command: argument parsing, output and exit codes; the work happens elsewhere.

Exit codes: 0 success, 1 a runtime failure (e.g. no outbox yet), 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec

from cdpd import config, launch, logs
from cdpd.cluster import commands as cluster_commands
from cdpd.console import commands as console_commands
from cdpd.delivery import replay, report
from cdpd.delivery.store import DeliveryStatus, SqliteDeliveryStore
from cdpd.engage import commands as engage_commands
from cdpd.governance import commands as governance_commands
from cdpd.identity import commands as identity_commands
from cdpd.model.timestamps import format_ms, now_ms, parse_when_ms
from cdpd.outbox import commands as outbox_commands_cli
from cdpd.outbox import reader, schema
from cdpd.privacy import commands as privacy_commands
from cdpd.privacy import regulations_commands
from cdpd.warehouse import commands as warehouse_commands

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "destinations":  # the catalog needs no config file
        return _destinations(args)
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"cdpd: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    command: str = args.command
    if command == "serve":
        return _serve(cfg, args.config)
    if command == "check-config":
        return _check_config(cfg, args.config)
    if command == "outbox":
        return _outbox(cfg, args)
    if command == "rejects":
        if cfg.storage.backend == "jetstream":
            from cdpd.cluster import outbox_cli

            return outbox_cli.rejects(cfg, args)
        return outbox_commands_cli.rejects(cfg, args)
    if command == "deliveries":
        return _deliveries(cfg, args)
    if command == "replay":
        return _replay(cfg, args)
    if command == "mappings":
        return _mappings(cfg, args)
    if command in console_commands.COMMANDS:
        return console_commands.run(cfg, args)
    if command == regulations_commands.COMMAND:
        return regulations_commands.run(cfg, args)
    if command == "profiles":
        return identity_commands.run(cfg, args)
    if command in governance_commands.COMMANDS:
        return governance_commands.run(cfg, args)
    if command in engage_commands.COMMANDS:
        return engage_commands.run(cfg, args)
    if command == "privacy":
        return privacy_commands.run(cfg, args)
    if command == cluster_commands.COMMAND:
        return cluster_commands.run(cfg, args)
    if command == "warehouse":
        if argv is None:  # the real program: warnings and errors as JSON lines on stderr
            logs.configure("warning", sys.stderr.buffer)
        return warehouse_commands.run(cfg, args)
    raise AssertionError(f"unhandled command {command}")


def _parser() -> argparse.ArgumentParser:
    parser, common = launch.base_parser()
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", parents=[common], help="run the daemon")
    commands.add_parser("check-config", parents=[common], help="validate the config and exit")
    outbox = commands.add_parser("outbox", parents=[common], help="inspect the outbox")
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True)
    stats = outbox_commands.add_parser("stats", parents=[common], help="counts and file size")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    tail = outbox_commands.add_parser(
        "tail", parents=[common], help="the most recent messages, as JSON lines (-f: and new ones)"
    )
    outbox_commands_cli.add_tail_arguments(tail)
    outbox_commands_cli.add_move_parsers(outbox_commands, common)
    outbox_commands_cli.add_rejects_parser(commands, common)
    deliveries = commands.add_parser("deliveries", parents=[common], help="where deliveries stand")
    deliveries_commands = deliveries.add_subparsers(dest="deliveries_command", required=True)
    d_stats = deliveries_commands.add_parser("stats", parents=[common], help="per destination")
    d_stats.add_argument("--json", action="store_true", help="print one JSON object")
    d_dead = deliveries_commands.add_parser("dead", parents=[common], help="dead deliveries")
    d_dead.add_argument("--destination", help="only this destination")
    d_dead.add_argument("-n", type=int, default=50, help="how many (default 50)")
    d_dead.add_argument("--json", action="store_true", help="print JSON lines")
    d_show = deliveries_commands.add_parser(
        "show", parents=[common], help="where one message stands with each destination"
    )
    d_show.add_argument("message_id", help="the message's messageId")
    d_show.add_argument("--json", action="store_true", help="print JSON lines")
    d_retry = deliveries_commands.add_parser(
        "retry", parents=[common], help="make every waiting retry of a destination due now"
    )
    d_retry.add_argument("--destination", required=True, help="the destination's name")
    replay = commands.add_parser(
        "replay", parents=[common], help="deliver dead deliveries or archived messages again"
    )
    replay.add_argument("--destination", required=True, help="the destination's name")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--dead", action="store_true", help="re-queue its dead deliveries")
    which.add_argument(
        "--since",
        help="re-deliver messages received from this time (ISO-8601, or ago: 15m, 2h, 7d)",
    )
    replay.add_argument("--until", help="... up to this time (default: now; same forms)")
    replay.add_argument("--source", help="only messages from this source")
    catalog = commands.add_parser(
        "destinations", parents=[common], help="the destination catalog: settings, actions"
    )
    catalog.add_argument("--json", action="store_true", help="print one JSON document")
    mappings = commands.add_parser(
        "mappings", parents=[common], help="try a destination's subscriptions and mappings"
    )
    mappings_commands = mappings.add_subparsers(dest="mappings_command", required=True)
    m_test = mappings_commands.add_parser(
        "test",
        parents=[common],
        help="which actions a message triggers and the requests they would send (none is sent)",
    )
    m_test.add_argument("destination", help="the destination's name in the config")
    m_test.add_argument(
        "--message",
        help="a JSON file holding one message ('-': standard input; default: a sample track)",
    )
    warehouse_commands.add_parser(commands, common)
    identity_commands.add_parser(commands, common)
    governance_commands.add_parsers(commands, common)
    console_commands.add_parsers(commands, common)
    engage_commands.add_parsers(commands, common)
    regulations_commands.add_parser(commands, common)
    privacy_commands.add_parser(commands, common)
    cluster_commands.add_parser(commands, common)
    return parser


def _serve(cfg: config.Config, path: str) -> int:
    from cdpd import app  # imported here so that the inspection commands start fast
    from cdpd.startup import StartupError

    log_writer = logs.configure(cfg.logging.level)
    try:
        return app.run(cfg, log_writer, path)
    except config.ConfigError as exc:
        print(f"cdpd: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StartupError as exc:
        log_writer.flush()
        print(f"cdpd: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _check_config(cfg: config.Config, path: str) -> int:
    from cdpd.destinations import registry
    from cdpd.governance import plans
    from cdpd.mapping import kit

    try:
        for destination in cfg.destinations:
            if destination.enabled:  # a disabled destination needs no credentials yet
                registry.build(destination)
            for action in registry.actions_of(destination):
                where = f"destination {destination.name!r}, action {action.name!r}.mapping"
                for warning in kit.warnings(action.mapping, where):
                    print(f"cdpd: warning: {path}: {warning} (each message it maps fails)",
                          file=sys.stderr)  # fmt: skip
        plans.load_all(cfg.tracking_plans)
    except config.ConfigError as exc:
        print(f"cdpd: config error: {path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if cfg.storage.backend == "jetstream":
        return _check_cluster(cfg, path)
    print(
        f"{path}: ok ({len(cfg.sources)} sources, {len(cfg.destinations)} destinations, "
        f"outbox {cfg.storage.outbox_path}, listening on {cfg.server.listen})"
    )
    return EXIT_OK


def _check_cluster(cfg: config.Config, path: str) -> int:
    """The JetStream backend: what it leaves out, a reachable cluster, matching streams."""
    from cdpd.cluster import connect, ported

    for note in ported.not_served(cfg):
        print(f"cdpd: note: {path}: {note}", file=sys.stderr)
    problems = asyncio.run(connect.check(cfg.storage.jetstream))
    for problem in problems:
        print(f"cdpd: cluster: {problem}", file=sys.stderr)
    if problems:
        return EXIT_FAILURE
    jetstream = cfg.storage.jetstream
    print(
        f"{path}: ok ({len(cfg.sources)} sources, JetStream stream {jetstream.stream} on "
        f"{', '.join(jetstream.servers)}, listening on {cfg.server.listen})"
    )
    return EXIT_OK


def _outbox(cfg: config.Config, args: argparse.Namespace) -> int:
    if args.outbox_command == "import":
        return outbox_commands_cli.import_(cfg, args)
    if cfg.storage.backend == "jetstream" and args.outbox_command in {"stats", "tail"}:
        from cdpd.cluster import outbox_cli

        return outbox_cli.outbox(cfg, args)
    path = cfg.storage.outbox_path
    if not path.exists():
        print(f"cdpd: there is no outbox at {path} yet", file=sys.stderr)
        return EXIT_FAILURE
    if args.outbox_command == "stats":
        stats = asyncio.run(reader.stats(path))
        stats = msgspec.structs.replace(stats, sequence_gaps=asyncio.run(_sequence_gaps(cfg)))
        print(msgspec.json.encode(stats).decode() if args.json else _format_stats(stats))
        return EXIT_OK
    if args.outbox_command == "export":
        return outbox_commands_cli.export(cfg, args)
    return outbox_commands_cli.tail(cfg, args)


def _destinations(args: argparse.Namespace) -> int:
    from cdpd.destinations import describe

    if args.json:
        print(msgspec.json.encode(describe.describe()).decode())
    else:
        print(describe.text())
    return EXIT_OK


def _mappings(cfg: config.Config, args: argparse.Namespace) -> int:
    from cdpd.destinations import rehearsal

    destination = next((d for d in cfg.destinations if d.name == args.destination), None)
    if destination is None:
        print(f"cdpd: no destination is named {args.destination!r}", file=sys.stderr)
        return EXIT_USAGE
    message: Any = rehearsal.SAMPLE_MESSAGE
    if args.message is not None:
        try:
            text = sys.stdin.read() if args.message == "-" else Path(args.message).read_text()
            message = msgspec.json.decode(text)
        except (OSError, UnicodeDecodeError, msgspec.DecodeError) as exc:
            print(f"cdpd: --message {args.message}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if not isinstance(message, dict):
            print(f"cdpd: --message {args.message}: expected a JSON object", file=sys.stderr)
            return EXIT_USAGE
    try:
        report = asyncio.run(rehearsal.rehearse(destination, message))
    except config.ConfigError as exc:
        print(f"cdpd: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(msgspec.json.format(msgspec.json.encode(report), indent=2).decode())
    return EXIT_OK


def _deliveries(cfg: config.Config, args: argparse.Namespace) -> int:
    if cfg.storage.backend == "jetstream":
        from cdpd.cluster.cli import deliveries

        return deliveries(cfg, args)
    path = cfg.storage.outbox_path
    if not path.exists():
        print(f"cdpd: there is no outbox at {path} yet", file=sys.stderr)
        return EXIT_FAILURE
    if args.deliveries_command == "stats":
        names = [d.name for d in cfg.destinations]
        reports = asyncio.run(_read(path, lambda conn: report.destinations(conn, names)))
        print(msgspec.json.encode(reports).decode() if args.json else _format_reports(reports))
        return EXIT_OK
    if args.deliveries_command == "show":
        return _show(cfg, args)
    if args.deliveries_command == "retry":
        return _retry(cfg, args)
    dead = asyncio.run(_read(path, lambda conn: report.dead(conn, args.destination, args.n)))
    for entry in dead:
        print(msgspec.json.encode(entry).decode() if args.json else _dead_line(entry))
    if not dead:
        print("(no dead deliveries)", file=sys.stderr)
    return EXIT_OK


def _dead_line(entry: report.DeadDelivery) -> str:
    return (
        f"{entry.finished_at or '-'}  {entry.destination:<20} {entry.message_id:<36} "
        f"{_plural(entry.attempts, 'attempt')}  {entry.last_error or '-'}"
    )


def _plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 attempt`, `2 attempts`; `nouns` for an irregular plural."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def _replay(cfg: config.Config, args: argparse.Namespace) -> int:
    destination = next((d for d in cfg.destinations if d.name == args.destination), None)
    if destination is None:
        print(f"cdpd: no destination is named {args.destination!r}", file=sys.stderr)
        return EXIT_USAGE
    now = now_ms()
    try:
        since_ms = parse_when_ms(args.since, now) if args.since else None
        until_ms = parse_when_ms(args.until, now) if args.until else now
        since, until = format_ms(since_ms) if since_ms is not None else None, format_ms(until_ms)
    except ValueError as exc:
        print(f"cdpd: --since/--until: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if since_ms is not None and since_ms >= until_ms:
        print(f"cdpd: --since ({since}) must be before --until ({until})", file=sys.stderr)
        return EXIT_USAGE
    try:
        if cfg.storage.backend == "jetstream":
            from cdpd.cluster.cli import replay_on_cluster

            count = replay_on_cluster(cfg, destination, since, until, args.source)
        else:
            count = asyncio.run(
                _replay_in_outbox(cfg.storage.outbox_path, destination, since, until, args)
            )
    except config.ConfigError as exc:
        print(f"cdpd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    what = _plural(count, "dead delivery", "dead deliveries") if args.dead else None
    print(f"{what or _plural(count, 'message')} queued for {destination.name}")
    return EXIT_OK


async def _replay_in_outbox(
    path: Path,
    destination: config.Destination,
    since: str | None,
    until: str,
    args: argparse.Namespace,
) -> int:
    async with _store(path) as store:
        if since is None:
            return await replay.replay_dead(store, destination)
        return await replay.replay_range(store, destination, since, until, args.source)


@contextlib.asynccontextmanager
async def _store(path: Path) -> AsyncIterator[SqliteDeliveryStore]:
    """The delivery store on the outbox file, writing through a connection of the CLI's own."""
    async with schema.connect(path) as conn:

        def transact(operation: Any) -> Any:
            return replay.in_transaction(conn, operation)

        yield SqliteDeliveryStore(transact, path)


def _show(cfg: config.Config, args: argparse.Namespace) -> int:
    from cdpd.delivery.service import routing_rule

    rules = [routing_rule(d) for d in cfg.destinations]

    async def show() -> list[DeliveryStatus]:
        async with _store(cfg.storage.outbox_path) as store:
            return await store.show(args.message_id, rules)

    return _print_statuses(asyncio.run(show()), args)


def _print_statuses(found: list[DeliveryStatus], args: argparse.Namespace) -> int:
    if not found:
        print(f"cdpd: no message {args.message_id!r} in the outbox", file=sys.stderr)
        return EXIT_FAILURE
    for status in found:
        if args.json:
            print(msgspec.json.encode(status).decode())
            continue
        line = f"{status.destination:<20} seq {status.seq:<8} {status.state}"
        if status.attempts:
            line += f", {status.attempts} attempts"
        if status.next_attempt_at:
            line += f", next at {status.next_attempt_at}"
        if status.last_error:
            line += f", last error: {status.last_error}"
        print(line)
    return EXIT_OK


def _retry(cfg: config.Config, args: argparse.Namespace) -> int:
    if not any(d.name == args.destination for d in cfg.destinations):
        print(f"cdpd: no destination is named {args.destination!r}", file=sys.stderr)
        return EXIT_USAGE

    async def retry() -> int:
        async with _store(cfg.storage.outbox_path) as store:
            return await store.retry_now(args.destination, format_ms(now_ms()))

    count = asyncio.run(retry())
    waiting = _plural(count, "waiting delivery", "waiting deliveries")
    print(f"{waiting} of {args.destination} {'is' if count == 1 else 'are'} due now")
    return EXIT_OK


async def _read(path: Path, query: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
    async with schema.connect(path, readonly=True) as conn:
        return await query(conn)


def _format_reports(reports: list[report.DestinationReport]) -> str:
    lines = [
        f"{'destination':<20} {'behind':>9} {'pending':>8} {'retrying':>9} {'dead':>6}"
        f" {'retried ok':>10}"
        f" {'p50 ms':>8} {'p95 ms':>8}  errors (24 h)"
    ]
    for r in reports:
        errors = ", ".join(f"{status}: {count}" for status, count in r.errors_by_status.items())
        lines.append(
            f"{r.destination:<20} {r.backlog:>9} {r.pending:>8} {r.retrying:>9} {r.dead:>6}"
            f" {r.delivered:>10} {_ms(r.latency_p50_ms):>8} {_ms(r.latency_p95_ms):>8}"
            f"  {errors or '-'}{'  UNHEALTHY (401/403)' if r.unhealthy else ''}"
        )
        if r.last_error is not None:
            e = r.last_error
            lines.append(f"{'':<20} last error {e.at} on {e.message_id}: {e.error}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


async def _sequence_gaps(cfg: config.Config) -> list[Any]:
    """The warehouses ahead of the outbox (those that cannot be reached are not checked)."""
    from cdpd.warehouse import loader

    gaps = []
    for warehouse in cfg.warehouses:
        try:
            gap = await loader.sequence_gap(cfg, warehouse)
        except loader.SYNC_ERRORS:
            continue
        if gap is not None:
            gaps.append(gap)
    return gaps


def _format_stats(stats: reader.OutboxStats) -> str:
    lines = [f"PROBLEM   {gap.message}" for gap in stats.sequence_gaps]
    lines += [
        f"outbox    {stats.path}",
        f"size      {_human_bytes(stats.file_bytes)} ({stats.file_bytes} bytes, with the WAL)",
        f"messages  {stats.messages} (last seq {stats.last_seq})",
        f"received  {stats.first_received_at or '-'} .. {stats.last_received_at or '-'}",
        "",
        f"{'source':<24} {'type':<10} {'messages':>10}",
    ]
    lines += [f"{c.source:<24} {c.type:<10} {c.messages:>10}" for c in stats.by_type]
    lines += ["", f"{'source':<24} {'rejected because':<24} {'count':>10}"]
    lines += [f"{r.source or '-':<24} {r.reason_code:<24} {r.rejects:>10}" for r in stats.rejects]
    if not stats.rejects:
        lines.append("(no rejected messages)")
    lines += ["", f"{'consumer':<32} {'position':>10} {'behind':>10} {'seconds':>10}"]
    lines += [
        f"{c.name:<32} {c.seq:>10} {c.messages_behind:>10} {c.seconds_behind:>10.1f}"
        + ("  (paused)" if c.paused else "")
        for c in stats.consumers
    ]
    if not stats.consumers:
        lines.append("(no consumers)")
    return "\n".join(lines)


def _human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


if __name__ == "__main__":
    raise SystemExit(main())
