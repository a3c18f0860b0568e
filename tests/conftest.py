from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from cdpd import config as cdpd_config
from cdpd.app import Running, running
from tests.helpers import config_text


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep the slow subprocess tests last, so a quick failure shows first."""
    items.sort(key=lambda item: "system" in item.keywords)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
def make_config(tmp_path: Path, data_dir: Path) -> Callable[..., cdpd_config.Config]:
    def make(extra: str = "") -> cdpd_config.Config:
        path = tmp_path / "cdpd.toml"
        path.write_text(config_text(data_dir, extra))
        return cdpd_config.load(path)

    return make


@pytest.fixture
async def cdpd(make_config: Callable[..., cdpd_config.Config]) -> AsyncIterator[Running]:
    async with running(make_config()) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
