"""`cdpd outbox tail [-f]` with filters, `cdpd outbox export|import` and `cdpd rejects`: their
arguments and output.

cli.py hands these over; the queries are in `cdpd.outbox.reader`, the export in
`cdpd.outbox.export`, the import in `cdpd.cluster.outbox_import`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

import msgspec

from cdpd.config import Config
from cdpd.outbox import reader

if TYPE_CHECKING:
    from cdpd.cluster.outbox_import import ImportCounts

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def add_tail_arguments(tail: argparse.ArgumentParser) -> None:
    tail.add_argument("-n", type=int, default=10, help="how many messages first (default 10)")
    tail.add_argument(
        "-f", "--follow", action="store_true", help="keep printing messages as they are stored"
    )
    tail.add_argument("--source", help="only messages of this source")
    tail.add_argument("--type", help="only messages of this type (track, identify, ...)")
    tail.add_argument("--event", help="only track messages of this event (or pages of this name)")
    tail.add_argument("--user", help="only messages of this userId or anonymousId")
    tail.add_argument(
        "--json", action="store_true", help="JSON lines (tail's only form; accepted everywhere)"
    )


def add_move_parsers(
    outbox_commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    export = outbox_commands.add_parser(
        "export",
        parents=[common],
        help="the outbox's messages as JSON lines, with who still owes each (for import)",
    )
    export.add_argument("--output", default="-", help="the file to write ('-': standard output)")
    export.add_argument(
        "--pending-only",
        action="store_true",
        help="only messages some destination or warehouse is still owed",
    )
    imported = outbox_commands.add_parser(
        "import",
        parents=[common],
        help="publish an export into the JetStream backend (a config with backend = jetstream)",
    )
    imported.add_argument("--input", default="-", help="the export to read ('-': standard input)")


def add_rejects_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    rejects = commands.add_parser(
        "rejects", parents=[common], help="rejected messages: the most recent, or counts by reason"
    )
    rejects.add_argument("-n", type=int, default=20, help="how many rejects (default 20)")
    rejects.add_argument("--source", help="only rejects of this source")
    rejects.add_argument("--reason", help="only rejects with this reason code")
    rejects.add_argument(
        "--counts", action="store_true", help="counts by source and reason code instead"
    )
    rejects.add_argument("--json", action="store_true", help="print JSON lines")


def tail(cfg: Config, args: argparse.Namespace) -> int:
    if args.n < 0:
        print("cdpd: -n must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    only = reader.TailFilter(source=args.source, type=args.type, event=args.event, user=args.user)
    path = cfg.storage.outbox_path
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends -f: not an error
        asyncio.run(_tail(path, args.n, only, follow=args.follow))
    return EXIT_OK


async def _tail(path: Path, count: int, only: reader.TailFilter, *, follow: bool) -> None:
    last = await reader.last_seq(path)
    if count:
        for message in await reader.tail(path, count, only, up_to_seq=last):
            _print_json(message)
    if follow:
        async for message in reader.follow(path, last, only):
            _print_json(message)


def export(cfg: Config, args: argparse.Namespace) -> int:
    from cdpd.outbox import export as exports

    try:
        with _opened(args.output, "wb", sys.stdout.buffer) as out:
            counts = asyncio.run(exports.export(cfg, out, pending_only=args.pending_only))
    except exports.WarehouseUnreadable as exc:
        print(f"cdpd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"cdpd: --output {args.output}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(
        f"exported {counts.messages} messages up to seq {counts.last_seq}"
        f" ({counts.owed} still owed to a destination or warehouse)",
        file=sys.stderr,
    )
    return EXIT_OK


def import_(cfg: Config, args: argparse.Namespace) -> int:
    if cfg.storage.backend != "jetstream":
        print(
            "cdpd: outbox import publishes into the JetStream backend: the config's [storage]"
            ' backend is not "jetstream"',
            file=sys.stderr,
        )
        return EXIT_USAGE
    from cdpd.cluster import outbox_import
    from cdpd.startup import StartupError

    try:
        with _opened(args.input, "rb", sys.stdin.buffer) as source:
            counts = asyncio.run(outbox_import.import_export(cfg, source))
    except OSError as exc:
        print(f"cdpd: --input {args.input}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except outbox_import.ImportRefused as exc:
        print(f"cdpd: --input {args.input}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (StartupError, outbox_import.ImportStopped) as exc:
        print(f"cdpd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for name in counts.not_configured:
        print(f"cdpd: note: the export's {name} is not in this config", file=sys.stderr)
    print(_import_line(counts))
    return EXIT_OK


def _import_line(counts: ImportCounts) -> str:
    line = (
        f"imported {counts.read} messages: {counts.stored} stored, {counts.duplicates} already"
        f" in the stream, {counts.skipped} imported by an earlier run"
    )
    if counts.warehouses:
        line += f"; positions set to the stream's start: {', '.join(counts.warehouses)}"
    return line


@contextlib.contextmanager
def _opened(name: str, mode: str, standard: IO[bytes]) -> Iterator[IO[bytes]]:
    if name == "-":
        yield standard
        return
    with Path(name).open(mode) as file:
        yield file


def _print_json(value: object) -> None:
    print(msgspec.json.encode(value).decode(), flush=True)


def rejects(cfg: Config, args: argparse.Namespace) -> int:
    path = cfg.storage.outbox_path
    if not path.exists():
        print(f"cdpd: there is no outbox at {path} yet", file=sys.stderr)
        return EXIT_FAILURE
    if args.n < 1:
        print("cdpd: -n must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.counts:
        counts = asyncio.run(reader.reject_counts(path))
        counts = [c for c in counts if _matches(c.source, c.reason_code, args)]
        for count in counts:
            print(_json(count) if args.json else _count_line(count))
        if not counts and not args.json:
            print("(no rejected messages)", file=sys.stderr)
        return EXIT_OK
    found = asyncio.run(reader.rejects(path, args.n, args.source, args.reason))
    for reject in found:
        print(_json(reject) if args.json else _reject_line(reject))
    if not found and not args.json:
        print("(no rejected messages)", file=sys.stderr)
    return EXIT_OK


def _matches(source: str | None, reason_code: str, args: argparse.Namespace) -> bool:
    return (args.source is None or source == args.source) and (
        args.reason is None or reason_code == args.reason
    )


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def _count_line(count: reader.RejectCount) -> str:
    return f"{count.source or '-':<24} {count.reason_code:<28} {count.rejects:>10}"


def _reject_line(reject: reader.StoredReject) -> str:
    return (
        f"{reject.received_at}  {reject.source or '-':<16} {reject.reason_code:<24} "
        f"{reject.message_id or '-':<24} {reject.reason}"
    )
