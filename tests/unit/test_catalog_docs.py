"""Every destination type in the catalog is documented: a page under docs/destinations with a
config example that cdpd accepts, every setting of its own and every action kind named there,
and a row in the README's catalog table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cdpd import config as cdpd_config
from cdpd.destinations import describe, registry

ROOT = Path(__file__).resolve().parents[2]
TYPES = describe.describe()


@pytest.mark.parametrize("info", TYPES, ids=[info.type for info in TYPES])
def test_each_type_has_a_page_naming_its_settings_and_kinds(info: describe.TypeInfo) -> None:
    page = ROOT / "docs" / "destinations" / f"{info.type}.md"
    assert page.exists(), f"no page for {info.type}"
    text = page.read_text()
    assert f'type = "{info.type}"' in text
    missing = [s.name for s in info.settings if f"`{s.name}`" not in text]
    assert not missing, f"{page.name} does not mention settings {missing}"
    kinds = [k.name for k in info.actions if f"`{k.name}`" not in text]
    assert not kinds, f"{page.name} does not mention action kinds {kinds}"


@pytest.mark.parametrize("info", TYPES, ids=[info.type for info in TYPES])
def test_each_pages_config_example_is_accepted(info: describe.TypeInfo) -> None:
    """The first TOML block with `[[destinations]]` on the page parses and builds (credentials
    given through environment variables are set for the check)."""
    text = (ROOT / "docs" / "destinations" / f"{info.type}.md").read_text()
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "[[destinations]]" in b]
    assert blocks, f"{info.type}.md has no config example"
    env = {
        name: "https://hooks.example.com/T0/B0/x" if key.endswith("url") else "x" * 40
        for key, name in re.findall(r'(\w+)_env = "([A-Z0-9_]+)"', blocks[0])
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        config = cdpd_config.parse(blocks[0], origin=f"{info.type}.md")
        for destination in config.destinations:
            registry.build(destination)


def test_the_readme_catalog_table_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    for info in TYPES:
        page = f"docs/destinations/{info.type}.md"
        row = f"| `{info.type}` | [{page}]({page}) |"
        assert row in readme, f"README has no catalog row for {info.type}"


def test_a_common_setting_is_listed_where_a_type_sets_its_own_default_or_limits() -> None:
    by_type = {info.type: {s.name: s for s in info.settings} for info in TYPES}
    assert by_type["mixpanel"]["batch_size"] == describe.SettingInfo(
        "batch_size", "integer >= 1, <= 2000", 500, False
    )
    assert by_type["slack"]["rate_limit_per_s"].default == 1.0
    assert "concurrency" not in by_type["webhook"]  # the common default: listed once for all


def test_the_example_configs_commented_destinations_are_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = (ROOT / "conf" / "cdpd.toml").read_text()
    paragraphs = [p for p in text.split("\n\n") if "# [[destinations]]" in p]
    lines = [line for p in paragraphs for line in p[p.index("# [[destinations]]") :].splitlines()]
    toml = "\n".join(line.removeprefix("#").removeprefix(" ") for line in lines)
    for name in re.findall(r'_env = "([A-Z0-9_]+)"', toml):
        monkeypatch.setenv(name, "x" * 32)
    config = cdpd_config.parse(toml, origin="conf/cdpd.toml")
    assert [d.name for d in config.destinations] == ["events-hook", "product-analytics"]
    for destination in config.destinations:
        registry.build(destination)
