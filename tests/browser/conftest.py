"""Browser tests: Playwright driving the system's Chromium (Debian's `chromium` package, which
.ci/run installs; Playwright never downloads a browser here). Without it the tests skip on a
developer's machine and fail under CI=true."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright, expect


def chromium_path() -> str:
    found = os.environ.get("CDPD_CHROMIUM") or shutil.which("chromium")
    if found is None:
        reason = "no chromium on PATH (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: .ci/run installs it)")
        pytest.skip(reason)
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    # What a page shows waits on the daemon's background work and on a browser sharing a busy
    # machine: each expectation returns as soon as it holds, so a long bound costs nothing.
    expect.set_options(timeout=30_000)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium_path())
        try:
            yield launched
        finally:
            await launched.close()
