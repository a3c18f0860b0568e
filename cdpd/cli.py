"""The `cdpd` command: argument parsing, output and exit codes; the work happens elsewhere.

Exit codes: 0 success, 1 a runtime failure (e.g. no outbox yet), 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import msgspec

from cdpd import __version__, config, logs
from cdpd.outbox import reader
from cdpd.warehouse import commands as warehouse_commands

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(f"cdpd: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    command: str = args.command
    if command == "serve":
        return _serve(cfg)
    if command == "check-config":
        return _check_config(cfg, args.config)
    if command == "outbox":
        return _outbox(cfg, args)
    if command == "warehouse":
        if argv is None:  # the real program: warnings and errors as JSON lines on stderr
            logs.configure("warning", sys.stderr.buffer)
        return warehouse_commands.run(cfg, args)
    raise AssertionError(f"unhandled command {command}")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=config.default_path(),
        help="TOML config file (default: $CDPD_CONFIG, then /etc/cdpd/cdpd.toml)",
    )
    parser = argparse.ArgumentParser(prog="cdpd", description="customer data platform daemon")
    parser.add_argument("--version", action="version", version=f"cdpd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", parents=[common], help="run the daemon")
    commands.add_parser("check-config", parents=[common], help="validate the config and exit")
    outbox = commands.add_parser("outbox", help="inspect the outbox")
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True)
    stats = outbox_commands.add_parser("stats", parents=[common], help="counts and file size")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    tail = outbox_commands.add_parser("tail", parents=[common], help="the most recent messages")
    tail.add_argument("-n", type=int, default=10, help="how many messages (default 10)")
    warehouse_commands.add_parser(commands, common)
    return parser


def _serve(cfg: config.Config) -> int:
    from cdpd import app  # imported here so that the inspection commands start fast

    log_writer = logs.configure(cfg.logging.level)
    return app.run(cfg, log_writer)


def _check_config(cfg: config.Config, path: str) -> int:
    print(
        f"{path}: ok ({len(cfg.sources)} sources, {len(cfg.destinations)} destinations, "
        f"outbox {cfg.storage.outbox_path}, listening on {cfg.server.listen})"
    )
    return EXIT_OK


def _outbox(cfg: config.Config, args: argparse.Namespace) -> int:
    path = cfg.storage.outbox_path
    if not path.exists():
        print(f"cdpd: there is no outbox at {path} yet", file=sys.stderr)
        return EXIT_FAILURE
    if args.outbox_command == "stats":
        stats = asyncio.run(reader.stats(path))
        print(msgspec.json.encode(stats).decode() if args.json else _format_stats(stats))
        return EXIT_OK
    if args.n < 1:
        print("cdpd: -n must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    for message in asyncio.run(reader.tail(path, args.n)):
        print(msgspec.json.encode(message).decode())
    return EXIT_OK


def _format_stats(stats: reader.OutboxStats) -> str:
    lines = [
        f"outbox    {stats.path}",
        f"size      {_human_bytes(stats.file_bytes)} ({stats.file_bytes} bytes, with the WAL)",
        f"messages  {stats.messages}",
        f"received  {stats.first_received_at or '-'} .. {stats.last_received_at or '-'}",
        "",
        f"{'source':<24} {'type':<10} {'messages':>10}",
    ]
    lines += [f"{c.source:<24} {c.type:<10} {c.messages:>10}" for c in stats.by_type]
    lines += ["", f"{'source':<24} {'rejected because':<24} {'count':>10}"]
    lines += [f"{r.source or '-':<24} {r.reason_code:<24} {r.rejects:>10}" for r in stats.rejects]
    if not stats.rejects:
        lines.append("(no rejected messages)")
    return "\n".join(lines)


def _human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


if __name__ == "__main__":
    raise SystemExit(main())
