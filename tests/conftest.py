from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from cdpd import config as cdpd_config
from cdpd.app import Running, running
from tests.helpers import POSTGRES_ADMIN_DSN, WarehouseProbe, config_text, require_broker


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


# -- warehouses --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_test_dsn() -> Iterator[str]:
    """A throwaway database on the local PostgreSQL for this test run, dropped afterwards.
    Without a server the PostgreSQL tests skip, except under CI=true, where they fail."""
    name = f"cdpd_test_{secrets.token_hex(4)}"
    try:
        _in_own_loop(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as exc:
        reason = f"PostgreSQL is not reachable at {POSTGRES_ADMIN_DSN}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: the warehouse tests need it)")
        pytest.skip(reason)
    yield POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    _in_own_loop(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _in_own_loop(sql: str) -> None:
    """Run admin SQL on a thread with its own event loop (this fixture may be set up from
    inside a test's loop)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(_postgres_admin(sql))).result()


async def _postgres_admin(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> WarehouseProbe:
    """The same warehouse tests against each kind; the config entry is named "wh"."""
    if request.param == "sqlite":
        path = tmp_path / "warehouse.sqlite3"
        toml = f'[[warehouses]]\nname = "wh"\ntype = "sqlite"\npath = "{path}"\ninterval_s = 3600\n'
        return WarehouseProbe(kind="sqlite", toml=toml, sqlite_path=path)
    dsn = request.getfixturevalue("postgres_test_dsn")
    toml = f'[[warehouses]]\nname = "wh"\ntype = "postgres"\ndsn = "{dsn}"\ninterval_s = 3600\n'
    probe = WarehouseProbe(kind="postgres", toml=toml, dsn=dsn)
    await probe.empty()  # what a previous test loaded
    return probe


# -- message brokers: skipped when down on a user's machine, failed under CI=true --------------


def _broker(name: str, port: int) -> Any:
    """A session fixture: the local broker's address, once it is found listening."""

    @pytest.fixture(scope="session")
    def address() -> tuple[str, int]:
        return require_broker(name, ("127.0.0.1", port))

    return address


redis_server = _broker("Redis", 6379)
nats_server = _broker("NATS", 4222)
rabbitmq_server = _broker("RabbitMQ", 5672)
mqtt_server = _broker("Mosquitto", 1883)


# -- the JetStream backend ---------------------------------------------------------------------


@pytest.fixture
async def js_cluster(tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh three-server JetStream cluster on loopback (tests/jetstream_cluster.py)."""
    from tests.jetstream_cluster import jetstream_cluster

    async with jetstream_cluster(tmp_path / "jetstream") as cluster:
        yield cluster
