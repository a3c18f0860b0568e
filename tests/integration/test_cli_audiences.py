"""`cdpd audiences preview|list|show` over a real Engage store file."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cdpd import cli, config, launch
from cdpd.engage import catalog
from cdpd.engage.settings import definition_sources
from cdpd.engage.store import EngageStore
from cdpd.model.timestamps import format_ms, now_ms

CONFIG = """
[storage]
data_dir = "{data_dir}"

[[audiences]]
key = "buyers"
query = "event('Order Completed').within(30 days).count() >= 1"

[[computed_traits]]
key = "order_count"
query = "event('Order Completed').count()"
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "cdpd.toml"
    path.write_text(CONFIG.format(data_dir=tmp_path / "var"))
    return path


async def fill(config_path: Path, buyers: int, others: int) -> None:
    cfg = config.load(config_path)
    store = await EngageStore.open(config.engage_path(cfg))
    try:
        now = now_ms()
        sources = definition_sources(cfg.audiences, cfg.computed_traits)
        await store.register(sources, now)
        store.use(catalog.build(sources))
        inputs: list[tuple[str, dict[str, Any], str]] = []
        for n in range(buyers + others):
            event = "Order Completed" if n < buyers else "Signed Up"
            inputs.append(
                (
                    f"p{n}",
                    {
                        "type": "track",
                        "event": event,
                        "userId": f"u{n}",
                        "timestamp": format_ms(now),
                    },
                    "web",
                )
            )
        await store.apply_many(inputs, now)
    finally:
        await store.close()


def test_preview_counts_matching_profiles(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(fill(config_path, buyers=3, others=4))
    query = "event('Order Completed').within(7 days).count() >= 1"
    assert cli.main(["audiences", "preview", query, "--config", str(config_path)]) == 0
    assert capsys.readouterr().out.startswith("3 of 7 profiles match (")
    assert (
        cli.main(
            [
                "audiences",
                "preview",
                "trait('order_count') = 0",
                "--json",
                "--config",
                str(config_path),
            ]
        )
        == 0
    )
    answer = json.loads(capsys.readouterr().out)
    assert (answer["matching"], answer["profiles"]) == (4, 7)
    unkept = "event('Signed Up').count() >= 1"
    assert cli.main(["audiences", "preview", unkept, "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("0 of 7 profiles match")
    assert "counted as no events: event('Signed Up')" in out


def test_preview_of_a_bad_query_points_at_the_character(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(fill(config_path, buyers=1, others=0))
    assert (
        cli.main(["audiences", "preview", "event('x').count() >", "--config", str(config_path)])
        == 2
    )
    err = capsys.readouterr().err
    assert "line 1, column 21: expected a function" in err
    assert err.rstrip().endswith(" " * 24 + "^")
    assert (
        cli.main(["audiences", "preview", "event('x').count()", "--config", str(config_path)]) == 2
    )


def test_without_a_store_it_says_so(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audiences", "list", "--config", str(config_path)]) == 1
    assert "there is no Engage store" in capsys.readouterr().err
    assert not (config_path.parent / "var" / "engage.sqlite3").exists()


def test_list_and_show(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(fill(config_path, buyers=2, others=1))
    assert cli.main(["audiences", "list", "--json", "--config", str(config_path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["key"], r["size"], r["entries"], r["exits"]) for r in rows] == [
        ("buyers", 2, 2, 0),
        ("order_count", 2, 0, 0),
    ]
    assert cli.main(["audiences", "show", "buyers", "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("buyers (audience): event('Order Completed')")
    assert "size 2, entries 2, exits 0" in out
    assert " users p0 entered true" in out
    assert cli.main(["audiences", "show", "nope", "--config", str(config_path)]) == 1


def test_resync_starts_a_first_sync_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cdpd.toml"
    path.write_text(
        CONFIG.format(data_dir=tmp_path / "var")
        + '[[audiences.destinations]]\nname = "hook"\n'
        + '[[destinations]]\nname = "hook"\ntype = "webhook"\nurl = "http://127.0.0.1:9/x"\n'
    )
    asyncio.run(fill(path, buyers=2, others=0))

    async def sync_once() -> bool:
        cfg = config.load(path)
        store = await EngageStore.open(config.engage_path(cfg))
        try:
            store.use(catalog.build(definition_sources(cfg.audiences, cfg.computed_traits)))
            due = await store.sync_due("buyers", "hook")
            await store.mark_synced("buyers", "hook", due.position, now_ms())
            return (await store.sync_due("buyers", "hook")).first_sync
        finally:
            await store.close()

    assert asyncio.run(sync_once()) is False
    assert (
        cli.main(["audiences", "resync", "buyers", "--destination", "hook", "--config", str(path)])
        == 0
    )
    assert "the next sync sends every member again" in capsys.readouterr().out
    assert (
        cli.main(["audiences", "resync", "buyers", "--destination", "nope", "--config", str(path)])
        == 2
    )
    assert "is not sent to a destination named 'nope'" in capsys.readouterr().err


def test_the_program_runs_audiences_without_the_rest_of_cdpd(config_path: Path) -> None:
    """`cdpd audiences ...` answers through the light entry point: the same output as
    cli.py's, without importing cli.py (every stage and destination client)."""
    asyncio.run(fill(config_path, buyers=3, others=4))
    script = (
        "import sys\n"
        "from cdpd.launch import main\n"
        "code = main(sys.argv[1:])\n"
        "print('cli imported' if 'cdpd.cli' in sys.modules else 'cli not imported')\n"
        "raise SystemExit(code)\n"
    )
    query = "event('Order Completed').within(7 days).count() >= 1"
    done = subprocess.run(
        [sys.executable, "-c", script, "--config", str(config_path), "audiences", "preview", query],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3 of 7 profiles match (")
    assert done.stdout.rstrip().endswith("cli not imported")
    bad_query = "event('x').count() >"
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdpd",
            "audiences",
            "preview",
            bad_query,
            "--config",
            str(config_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "line 1, column 21: expected a function" in bad.stderr


def test_other_commands_go_through_cli(config_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cdpd", "check-config", "--config", str(config_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert launch.command_of(["--config", "audiences", "check-config"]) == "check-config"
    assert launch.command_of(["--config=x.toml", "audiences", "list"]) == "audiences"
    assert launch.command_of(["--help", "audiences"]) is None
    assert launch.command_of([]) is None
