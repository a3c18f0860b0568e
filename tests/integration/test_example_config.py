"""The shipped example config works out of the box: the README's first `curl` is delivered to
its destination without a warning, and the warehouse loads it."""

from __future__ import annotations

import shutil
from pathlib import Path

import aiohttp
import msgspec
import pytest
from structlog.testing import capture_logs

from cdpd import config as cdpd_config
from cdpd.app import running
from tests.helpers import PROJECT_ROOT, basic_auth

EXAMPLE = PROJECT_ROOT / "conf" / "cdpd.toml"


async def test_the_readme_curl_is_delivered_with_the_example_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession
) -> None:
    monkeypatch.chdir(tmp_path)  # the example's paths are relative, as in the README
    shutil.copy(EXAMPLE, tmp_path / "cdpd.toml")
    config = cdpd_config.load(tmp_path / "cdpd.toml")
    # Only the port changes (a test must not take 8088) and the disk floor (a test machine's
    # disk may be fuller than 256 MiB allows).
    config = msgspec.structs.replace(
        config,
        server=msgspec.structs.replace(config.server, listen="127.0.0.1:0"),
        storage=msgspec.structs.replace(config.storage, min_free_disk_bytes=0),
    )
    archive = tmp_path / "var" / "events.ndjson"
    with capture_logs() as logs:
        async with running(config) as server:
            # curl -u wk_website: -d '{"userId": "u1", "event": "Signed Up"}' .../v1/track
            async with http.post(
                f"{server.url}/v1/track",
                data=b'{"userId": "u1", "event": "Signed Up"}',
                headers={"Authorization": basic_auth("wk_website")},
            ) as response:
                assert response.status == 200
            lane = server.delivery.lanes["events-archive"]
            async with lane.stats.recorded:
                await lane.stats.recorded.wait_for(lambda: lane.stats.delivered >= 1)
            report = await server.warehouses.sync_now("local")
    lines = [msgspec.json.decode(line) for line in archive.read_bytes().splitlines()]
    assert [(m["userId"], m["event"]) for m in lines] == [("u1", "Signed Up")]
    assert (report.status, report.position) == ("success", 1)  # loaded (now or by its schedule)
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == []
