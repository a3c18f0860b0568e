"""The file destination end to end: a real cdpd writes the Segment spec examples as lines of
JSON; files rotate by size and by age (on the fake clock, also when idle), are gzipped and pruned;
a file that cannot be written is retried until it can."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cdpd import cli
from cdpd.app import Running
from cdpd.destinations.file import File
from cdpd.model.timestamps import parse_ms
from tests import spec_examples as spec
from tests.brokers import Deliver, attempts
from tests.contracts import harness
from tests.helpers import FakeClock, query
from tests.integration.test_delivery import delivered, recorded, send

EXAMPLES = [spec.IDENTIFY, spec.ORDER_COMPLETED, spec.PAGE, spec.SCREEN, spec.GROUP, spec.ALIAS]
START_MS = parse_ms("2026-12-05T23:15:00.000Z")


@pytest.fixture
def clock() -> FakeClock:
    """Delivery's clock, at START_MS: the names of the rotated files tell its time."""
    return FakeClock(START_MS)


def file_destination(path: Path, *options: str, name: str = "events") -> str:
    return harness.destination("file", name, path=str(path)) + "".join(f"{o}\n" for o in options)


def stored(data_dir: Path) -> list[str]:
    """The stored payloads, in the order they were accepted."""
    return [payload for (payload,) in query(data_dir, "SELECT payload FROM messages ORDER BY seq")]


def lines_of(path: Path) -> list[str]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    text = data.decode()
    assert text == "" or text.endswith("\n")
    return text.splitlines()


def names(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


async def upkept(server: Running, condition: Callable[[], bool], timeout_s: float = 30) -> None:
    """Wait until the files are as `condition` wants them after a round of the destination's
    upkeep (rotation by age, compression, pruning: background work)."""
    sender = server.delivery.senders["events"]
    assert isinstance(sender, File)
    async with asyncio.timeout(timeout_s), sender.upkept:
        await sender.upkept.wait_for(condition)


# -- what is written ---------------------------------------------------------------------------


@pytest.mark.parametrize("fsync", ["batch", "none"])
async def test_the_spec_examples_are_written_one_line_each(
    deliver: Deliver, data_dir: Path, tmp_path: Path, fsync: str
) -> None:
    path = tmp_path / "out" / "events.ndjson"  # its directory is made
    await deliver(file_destination(path, f'fsync = "{fsync}"'), EXAMPLES)
    assert lines_of(path) == stored(data_dir)  # each message exactly as stored, in order
    written = [msgspec.json.decode(line) for line in lines_of(path)]
    for line, example in zip(written, EXAMPLES, strict=True):
        assert {key: line[key] for key in example} == example
    # Each was delivered on its first attempt: nothing in the ledger.
    assert query(data_dir, "SELECT state, attempts, last_status FROM deliveries") == []
    assert names(path.parent) == ["events.ndjson"]


async def test_a_mapping_writes_its_data_field(deliver: Deliver, tmp_path: Path) -> None:
    orders = """
[[destinations.actions]]
name = "orders"
subscribe = 'type = "track" and event = "Order Completed"'
[destinations.actions.mapping]
data = { id = { "@path" = "$.messageId" }, order = { "@path" = "$.properties.order_id" }, \
skus = { "@arrayPath" = ["$.properties.products", { sku = { "@path" = "$.sku" } }] } }
"""
    path = tmp_path / "orders.ndjson"
    await deliver(file_destination(path) + orders, EXAMPLES, count=1)
    assert path.read_text() == (
        '{"id":"4a7f6e2d-0b2c-4b5e-9a8f-1c2d3e4f5a6b","order":"50314b8e9bcf000000000000",'
        '"skus":[{"sku":"45790-32"},{"sku":"46493-32"}]}\n'
    )


async def test_an_existing_file_is_appended_to_and_aged_from_its_mtime(
    deliver: Deliver, data_dir: Path, tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "events.ndjson"
    path.write_text('{"earlier":true}\n')
    mtime_s = (START_MS - 120_000) / 1000  # written two minutes before the start
    os.utime(path, (mtime_s, mtime_s))
    entry = file_destination(path, "rotate_interval_s = 3600")
    async with deliver.posting(entry, [spec.IDENTIFY], clock) as (server, lane):
        await delivered(lane, 1)
        assert lines_of(path) == ['{"earlier":true}', *stored(data_dir)]
        # Due an hour after the mtime, not an hour after cdpd's first line.
        clock.advance(3600 - 120)
        rotated = tmp_path / "events-20261206T001300Z-0001.ndjson.gz"
        await upkept(server, rotated.exists)
    assert lines_of(rotated) == ['{"earlier":true}', *stored(data_dir)]


# -- rotation ----------------------------------------------------------------------------------


def padded(n: int) -> dict[str, Any]:
    """A track message of about 1,100 bytes once stored."""
    return {
        "type": "track",
        "userId": "u1",
        "event": "Padded",
        "messageId": f"m{n}",
        "properties": {"n": n, "pad": "x" * 1000},
    }


async def test_rotation_by_size_keeps_every_line_once_in_order(
    deliver: Deliver, data_dir: Path, tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "events.ndjson"
    messages = [padded(n) for n in range(1, 7)]
    await deliver(file_destination(path, "max_bytes = 2500"), messages, clock=clock)
    lines = stored(data_dir)
    assert all(1000 < len(line) < 1240 for line in lines)  # two lines fit, three do not
    first = tmp_path / "events-20261205T231500Z-0001.ndjson.gz"
    second = tmp_path / "events-20261205T231500Z-0002.ndjson.gz"
    assert names(tmp_path) == sorted(["events.ndjson", first.name, second.name, "cdpd.toml", "var"])
    assert lines_of(first) == lines[0:2]
    assert lines_of(second) == lines[2:4]
    assert lines_of(path) == lines[4:6]
    with gzip.open(first) as packed:  # a complete gzip stream, its name the rotated file's
        assert packed.read().count(b"\n") == 2


async def test_rotation_by_time_also_when_idle(
    deliver: Deliver, data_dir: Path, tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "out" / "events.ndjson"
    http = deliver.http
    entry = file_destination(path, "rotate_interval_s = 60")
    async with deliver.posting(entry, [spec.IDENTIFY], clock) as (server, lane):
        await delivered(lane, 1)
        clock.advance(60)  # nothing more arrives: the file is rotated all the same
        first = path.parent / "events-20261205T231600Z-0001.ndjson.gz"
        await upkept(server, lambda: names(path.parent) == [first.name])
        clock.advance(30)
        await send(http, server, [spec.PAGE])
        await delivered(lane, 2)
        clock.advance(59)
        await send(http, server, [spec.SCREEN])  # the same file: 59 s since its first line
        await delivered(lane, 3)
        clock.advance(1)
        second = path.parent / "events-20261205T231730Z-0002.ndjson.gz"
        await upkept(server, second.exists)
    identify, page, screen = stored(data_dir)
    assert lines_of(first) == [identify]
    assert lines_of(second) == [page, screen]
    assert names(path.parent) == [first.name, second.name]


async def test_keep_prunes_the_oldest_rotated_files(
    deliver: Deliver, data_dir: Path, tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "out" / "events.ndjson"
    entry = file_destination(path, "max_bytes = 1", "keep = 2")
    async with deliver.posting(entry, [padded(n) for n in range(1, 6)], clock) as (server, lane):
        await delivered(lane, 5)
        kept = [f"events-20261205T231500Z-000{n}.ndjson.gz" for n in (3, 4)]
        await upkept(server, lambda: names(path.parent) == [*kept, "events.ndjson"])
    lines = stored(data_dir)
    assert [lines_of(path.parent / name) for name in kept] == [[lines[2]], [lines[3]]]
    assert lines_of(path) == [lines[4]]


async def test_a_rotation_cut_short_by_a_crash_is_finished_at_the_next_start(
    deliver: Deliver, tmp_path: Path
) -> None:
    path = tmp_path / "events.ndjson"
    plain = tmp_path / "events-20261205T231500Z-0007.ndjson"
    plain.write_text('{"a":1}\n{"a":2}\n')
    (tmp_path / (plain.name + ".gz.tmp")).write_bytes(b"\x1f\x8b half")  # a gzip cut short
    async with deliver.running(file_destination(path)) as server:
        packed = tmp_path / (plain.name + ".gz")
        await upkept(server, lambda: packed.exists() and not plain.exists())
        assert lines_of(packed) == ['{"a":1}', '{"a":2}']
        assert not (tmp_path / (plain.name + ".gz.tmp")).exists()


# -- failures ----------------------------------------------------------------------------------


async def test_an_unwritable_directory_is_retried_until_it_is_fixed(
    deliver: Deliver, data_dir: Path, tmp_path: Path, clock: FakeClock
) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the directory should be")
    path = blocker / "events.ndjson"
    async with deliver.posting(file_destination(path), [spec.IDENTIFY], clock) as (_, lane):
        await recorded(lane, 1)
        assert query(data_dir, "SELECT state, attempts FROM deliveries") == [("retrying", 1)]
        blocker.unlink()
        clock.advance(300)  # past the first backoff
        await recorded(lane, 2)
    error = f"cannot create the directory {blocker}: File exists"
    assert attempts(data_dir) == [(1, None, error, "retrying"), (2, 200, None, "delivered")]
    assert lines_of(path) == stored(data_dir)


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that fills up for real (mounting needs root; CI runs as root)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    mount_tool, umount_tool = shutil.which("mount") or "mount", shutil.which("umount") or "umount"
    done = subprocess.run(
        [mount_tool, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run([umount_tool, "-l", str(mount)], check=False)


async def test_a_full_disk_is_retried_with_its_error_and_leaves_no_partial_line(
    deliver: Deliver, data_dir: Path, tiny_filesystem: Path
) -> None:
    (tiny_filesystem / "filler").write_bytes(b"x" * (64 * 1024 - 100))  # leaves room for 100
    path = tiny_filesystem / "events.ndjson"
    await deliver(file_destination(path), [spec.IDENTIFY], wait=recorded)
    first = attempts(data_dir)[0]  # (a retry may follow at once: the backoff has full jitter)
    assert first == (1, None, f"cannot write {path}: No space left on device", "retrying")
    assert path.read_bytes() == b""  # the part that fitted was taken back


# -- configuration and the catalog -------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (
            ['fsync = "always"'],
            "destinations[0].fsync: Invalid enum value 'always' (expected one of: batch, none)",
        ),
        (["keep = 0"], "destinations[0].keep: Expected `int` >= 1"),
        (["max_bytes = -1"], "destinations[0].max_bytes: Expected `int` >= 0"),
        (["rotate_every = 60"], "destinations[0]: Object contains unknown field `rotate_every`"),
    ],
)
def test_check_config_points_at_a_bad_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], says: str
) -> None:
    destination = file_destination(tmp_path / "events.ndjson", *options)
    assert says in harness.check_config(tmp_path, capsys, destination)


def test_check_config_refuses_a_directory_and_a_shared_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    said = harness.check_config(tmp_path, capsys, file_destination(tmp_path))
    assert f"destination 'events': path {str(tmp_path)!r} is a directory" in said
    twice = file_destination(tmp_path / "a.ndjson") + file_destination(
        tmp_path / "a.ndjson", name="again"
    )
    assert "destinations[1].path:" in harness.check_config(tmp_path, capsys, twice)
    said = harness.check_config(tmp_path, capsys, file_destination(Path("/dev/null")))
    assert "path '/dev/null' is not a regular file" in said


def test_the_catalog_lists_the_file_destination(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["destinations", "--json"]) == 0
    catalog = {entry["type"]: entry for entry in msgspec.json.decode(capsys.readouterr().out)}
    entry = catalog["file"]
    assert entry["catalog_name"] == "File"
    settings = {s["name"]: s for s in entry["settings"]}
    assert settings["path"]["required"] is True
    assert settings["fsync"]["default"] == "batch"
    assert settings["keep"]["default"] is None
    assert entry["actions"][0]["fields"]["data"]["default"] == {"@path": "$."}
    assert entry["presets"][0]["kind"] == "send"
    assert cli.main(["destinations"]) == 0
    assert "file  (File)" in capsys.readouterr().out
