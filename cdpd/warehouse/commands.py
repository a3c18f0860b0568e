"""`cdpd warehouse sync NAME`, `status` and `rewind NAME`: their arguments and their output.

cli.py hands these over; the work happens in loader and the sinks (on the JetStream backend,
a sync is asked of the node holding the warehouse's lease: `cdpd.cluster.warehouse_sync`, and
the status reads the stream's end and the lease holders: `cdpd.cluster.warehouse_status`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import msgspec

from cdpd.config import Config, Warehouse
from cdpd.outbox import continuity
from cdpd.outbox import schema as outbox_schema
from cdpd.warehouse import loader
from cdpd.warehouse.report import SyncReport, WarehouseStatus
from cdpd.warehouse.sinks import open_sink, target

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
RECENT_SYNCS = 5
CLUSTER_WAIT_S = 600.0  # for the lease holder's report; the sync goes on past it


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = commands.add_parser("warehouse", help="load the outbox into warehouses")
    warehouse_commands = parser.add_subparsers(dest="warehouse_command", required=True)
    sync = warehouse_commands.add_parser("sync", parents=[common], help="sync one warehouse now")
    sync.add_argument("name", help="the warehouse's name in the config")
    status = warehouse_commands.add_parser(
        "status", parents=[common], help="last syncs, rows per table, errors"
    )
    status.add_argument("--json", action="store_true", help="print one JSON object per warehouse")
    rewind = warehouse_commands.add_parser(
        "rewind",
        parents=[common],
        help="move a warehouse's position back, after the outbox lost its last commits",
    )
    rewind.add_argument("name", help="the warehouse's name in the config")
    rewind.add_argument(
        "--to",
        type=int,
        help="the seq to load after (default: the warehouse's position as the outbox recorded it)",
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    if args.warehouse_command == "sync":
        return _sync(cfg, args.name)
    if args.warehouse_command == "rewind":
        return _rewind(cfg, args.name, args.to)
    return _status(cfg, json=args.json)


def _sync(cfg: Config, name: str) -> int:
    warehouse = _find(cfg, name)
    if warehouse is None:
        known = ", ".join(w.name for w in cfg.warehouses) or "none"
        print(f"cdpd: no warehouse is named {name!r} (known: {known})", file=sys.stderr)
        return EXIT_USAGE
    if cfg.storage.backend == "jetstream":
        return _sync_on_cluster(cfg, warehouse)
    report = asyncio.run(loader.sync(cfg, warehouse))
    print(_format_report(report, target(cfg, warehouse)))
    return EXIT_OK if report.status == "success" else EXIT_FAILURE


def _sync_on_cluster(cfg: Config, warehouse: Warehouse) -> int:
    """Asked of the node holding the warehouse's lease, which prints the same report."""
    from nats.errors import Error as NatsError  # the NATS client, only when needed

    from cdpd.cluster.connect import ClusterUnreachable
    from cdpd.cluster.warehouse_sync import SyncUnavailable, ask_cluster, describe

    try:
        answer = asyncio.run(ask_cluster(cfg, warehouse.name, CLUSTER_WAIT_S))
    except (ClusterUnreachable, SyncUnavailable, NatsError) as exc:
        print(f"cdpd: {warehouse.name}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if answer.report is None:
        print(f"cdpd: {warehouse.name}: {describe(answer, CLUSTER_WAIT_S)}", file=sys.stderr)
        return EXIT_FAILURE
    print(_format_report(answer.report, f"{target(cfg, warehouse)}, by node {answer.node}"))
    return EXIT_OK if answer.report.status == "success" else EXIT_FAILURE


class RewindRefused(Exception):
    pass


class Unreachable(Exception):
    """The JetStream cluster cannot be reached (its message says why)."""


def _rewind(cfg: Config, name: str, to: int | None) -> int:
    warehouse = _find(cfg, name)
    if warehouse is None:
        known = ", ".join(w.name for w in cfg.warehouses) or "none"
        print(f"cdpd: no warehouse is named {name!r} (known: {known})", file=sys.stderr)
        return EXIT_USAGE
    try:
        before, after = asyncio.run(_move_back(cfg, warehouse, to))
    except RewindRefused as exc:
        print(f"cdpd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (*loader.SYNC_ERRORS, Unreachable) as exc:
        print(f"cdpd: {name}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(
        f"{name}: position {before} -> {after}; its next sync loads the messages after "
        f"seq {after} (rows it already holds are merged by id)"
    )
    return EXIT_OK


async def _move_back(cfg: Config, warehouse: Warehouse, to: int | None) -> tuple[int, int]:
    """Set the warehouse's position to `to` (default: the one the outbox recorded for it);
    never forward, never past the end of what it loads from (the outbox, or the messages
    stream on the JetStream backend)."""
    end, recorded = await _end_and_recorded(cfg, warehouse)
    if to is None and recorded is None:
        raise RewindRefused(
            "--to is needed on the JetStream backend: a sequence of the messages stream (0: its"
            " start)"
        )
    target = to if to is not None else min(recorded or 0, end)
    if not 0 <= target <= end:
        raise RewindRefused(f"--to must be from 0 to the last seq ({end}), not {target}")
    async with open_sink(cfg, warehouse) as sink, sink.load() as load:
        before = await load.position()
        if target > before:
            raise RewindRefused(
                f"{warehouse.name} is at seq {before}; rewinding only moves back (to {target}?)"
            )
        await load.set_position(target)
    return before, target


async def _end_and_recorded(cfg: Config, warehouse: Warehouse) -> tuple[int, int | None]:
    """The last seq the warehouse can load, and its position as the outbox recorded it (none
    on the JetStream backend)."""
    if cfg.storage.backend == "jetstream":
        from cdpd.cluster.connect import ClusterUnreachable  # the NATS client, only when needed
        from cdpd.cluster.status import messages_last_seq

        try:
            return await messages_last_seq(cfg.storage.jetstream), None
        except ClusterUnreachable as exc:
            raise Unreachable(str(exc)) from exc
    path = cfg.storage.outbox_path
    if not path.exists():
        raise RewindRefused(f"there is no outbox at {path}")
    async with outbox_schema.connect(path, readonly=True) as outbox:
        end = await continuity.high_water(outbox)
        return end, await continuity.recorded_position(outbox, warehouse.name)


def _status(cfg: Config, *, json: bool) -> int:
    if not cfg.warehouses:
        print("cdpd: no warehouses are configured", file=sys.stderr)
        return EXIT_FAILURE
    try:
        statuses = asyncio.run(_statuses(cfg))
    except Unreachable as exc:
        print(f"cdpd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for status in statuses:
        print(msgspec.json.encode(status).decode() if json else _format_status(status))
    return EXIT_OK if all(s.error is None for s in statuses) else EXIT_FAILURE


async def _statuses(cfg: Config) -> list[WarehouseStatus]:
    last_seq: int | None
    holders: dict[str, str | None] | None  # on the JetStream backend
    if cfg.storage.backend == "jetstream":
        last_seq, holders = await _cluster_places(cfg)
    else:
        last_seq, holders = await loader.outbox_last_seq(cfg.storage.outbox_path), None
    statuses = [await _read_status(cfg, w, last_seq) for w in cfg.warehouses]
    last_change = await asyncio.to_thread(loader.identity_last_change, cfg)
    for status in statuses:
        status.identity_last_change = last_change
        if holders is not None:
            status.holder = holders.get(status.warehouse)
    return statuses


async def _cluster_places(cfg: Config) -> tuple[int, dict[str, str | None]]:
    """The messages stream's last seq and each warehouse's lease holder. Raises Unreachable."""
    from nats.errors import Error as NatsError  # the NATS client, only when needed

    from cdpd.cluster.connect import ClusterUnreachable
    from cdpd.cluster.warehouse_status import read_places

    try:
        places = await read_places(cfg.storage.jetstream, (w.name for w in cfg.warehouses))
    except ClusterUnreachable as exc:
        raise Unreachable(str(exc)) from exc
    except (NatsError, TimeoutError) as exc:
        raise Unreachable(f"the JetStream cluster did not answer: {exc!r}") from exc
    return places.last_seq, places.holders


async def _read_status(cfg: Config, warehouse: Warehouse, last_seq: int | None) -> WarehouseStatus:
    status = WarehouseStatus(
        warehouse=warehouse.name,
        type=warehouse.__struct_config__.tag or "",  # type: ignore[arg-type]
        target=target(cfg, warehouse),
        outbox_last_seq=last_seq,
    )
    try:
        async with open_sink(cfg, warehouse) as sink:
            status.position = await sink.position()
            status.profiles_position = await sink.profiles_position()
            status.recent_syncs = await sink.recent_syncs(RECENT_SYNCS)
            status.tables = await sink.table_rows()
    except loader.SYNC_ERRORS as exc:
        status.error = f"{type(exc).__name__}: {exc}"
    return status


def _find(cfg: Config, name: str) -> Warehouse | None:
    return next((w for w in cfg.warehouses if w.name == name), None)


def _format_report(report: SyncReport, where: str) -> str:
    lines = [
        f"warehouse {report.warehouse} ({where}): {report.status}, "
        f"{report.messages} messages loaded, position {report.position}",
    ]
    if report.first_seq is not None:
        lines.append(f"outbox seq {report.first_seq}..{report.position}")
    lines += [f"  {table:<48} {rows:>10}" for table, rows in sorted(report.rows.items())]
    lines.append(f"discards {report.discards}")
    if report.error:
        lines.append(f"error: {report.error}")
    return "\n".join(lines)


def _format_status(status: WarehouseStatus) -> str:
    pending = "-" if status.outbox_last_seq is None else status.outbox_last_seq - status.position
    lines = [
        f"warehouse {status.warehouse} ({status.type}, {status.target})",
        f"position  {status.position} (outbox last seq {status.outbox_last_seq or '-'}; "
        f"{pending} to load)",
    ]
    last_change = status.identity_last_change
    if last_change is not None:
        lines.append(
            f"profiles  change {status.profiles_position} (identity store last change "
            f"{last_change}; {last_change - status.profiles_position} to load)"
        )
    if status.holder is not msgspec.UNSET:
        lines.append(f"lease     {_held_by(status.holder)}")
    if status.error:
        lines.append(f"error     {status.error}")
    for sync in status.recent_syncs:
        line = f"sync      {sync.started_at} {sync.status:<8} {sync.messages:>8} messages"
        lines.append(line + (f"  error: {sync.error}" if sync.error else ""))
    if not status.recent_syncs and not status.error:
        lines.append("sync      (none yet)")
    lines += [f"  {t.schema}.{t.table:<44} {t.rows:>10} rows" for t in status.tables]
    return "\n".join(lines) + "\n"


def _held_by(holder: str | None) -> str:
    if holder is None:
        return "held by no node now (a node takes it within seconds of starting)"
    return f"held by node {holder}, which loads it"
