"""`storage.dedup_scope`: whether a messageId is a duplicate only within its source (the
default) or across every source (Segment's rule)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest

from cdpd import config as cdpd_config
from cdpd.app import running
from tests.helpers import OTHER_WRITE_KEY, WRITE_KEY, basic_auth, query
from tests.integration.test_tracking_api import post, track

WEBSITE = {"Authorization": basic_auth(WRITE_KEY)}
BACKEND = {"Authorization": basic_auth(OTHER_WRITE_KEY)}


async def _send_both(url: str, http: aiohttp.ClientSession) -> None:
    """The backend stores m-1 and m-2; then the website (a public key anyone can read from a
    page) sends the same ids, once alone and once in a batch with a repeat."""
    assert (await post(http, f"{url}/v1/batch", {"batch": [track(1), track(2)]}, BACKEND))[0] == 200
    assert (await post(http, f"{url}/v1/track", track(1), WEBSITE))[0] == 200
    batch = {"batch": [track(2), track(2), track(3)]}
    assert (await post(http, f"{url}/v1/batch", batch, WEBSITE))[0] == 200


async def test_by_default_one_source_cannot_suppress_anothers_messages(
    make_config: Callable[..., cdpd_config.Config], http: aiohttp.ClientSession, data_dir: Path
) -> None:
    config = make_config()
    assert config.storage.dedup_scope == "source"
    async with running(config) as server:
        await _send_both(server.url, http)
        assert (server.ingest.accepted, server.ingest.duplicates) == (5, 1)
    rows = query(data_dir, "SELECT source, message_id FROM messages ORDER BY seq")
    assert rows == [
        ("backend", "m-1"),
        ("backend", "m-2"),
        ("website", "m-1"),
        ("website", "m-2"),
        ("website", "m-3"),
    ]


async def test_global_scope_deduplicates_across_sources_as_segment_does(
    make_config: Callable[..., cdpd_config.Config], http: aiohttp.ClientSession, data_dir: Path
) -> None:
    config = make_config()
    config = msgspec.structs.replace(
        config, storage=msgspec.structs.replace(config.storage, dedup_scope="global")
    )
    async with running(config) as s:
        await _send_both(s.url, http)
        assert (s.ingest.accepted, s.ingest.duplicates) == (3, 3)
    rows = query(data_dir, "SELECT source, message_id FROM messages ORDER BY seq")
    assert rows == [("backend", "m-1"), ("backend", "m-2"), ("website", "m-3")]


def test_an_unknown_scope_is_a_config_error() -> None:
    with pytest.raises(cdpd_config.ConfigError) as err:
        cdpd_config.parse('[storage]\ndedup_scope = "workspace"\n')
    assert "storage.dedup_scope" in str(err.value)
    assert "expected one of: global, source" in str(err.value)
