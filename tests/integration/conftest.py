"""Fixtures of the integration tests: a cdpd run with one destination, and a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from cdpd import config as cdpd_config
from tests.brokers import Deliver
from tests.helpers import FakeClock


@pytest.fixture
def deliver(
    make_config: Callable[..., cdpd_config.Config], http: aiohttp.ClientSession, data_dir: Path
) -> Deliver:
    """Runs a cdpd with the destination a test gives, posts its messages and waits."""
    return Deliver(make_config, http, data_dir)


@pytest.fixture
def clock() -> FakeClock:
    """A clock for delivery that moves only when the test advances it."""
    return FakeClock()
