"""A JetStream node's reload (`cdpd.cluster.reloading`): sources, plans and workspaces put in
force; the sections built at start kept, each logged as waiting for a restart; a plan that
does not load refuses the whole config."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cdpd.cluster.reloading import NodeConfig
from cdpd.config import ConfigError, parse
from cdpd.governance.stage import Governance
from tests.helpers import config_text

HOOK = '[[destinations]]\nname = "{name}"\ntype = "webhook"\nurl = "http://127.0.0.1:9/{name}"\n'


def _config(tmp_path: Path, extra: str = "") -> str:
    return config_text(tmp_path / "data", extra)


async def test_sources_and_workspaces_change_destinations_wait_for_a_restart(
    tmp_path: Path,
) -> None:
    before = parse(_config(tmp_path, HOOK.format(name="hook_a")))
    node = NodeConfig(before, Governance(before))
    added = (
        '[[sources]]\nname = "shop"\nwrite_key = "wk_shop"\n'
        + HOOK.format(name="hook_a")
        + HOOK.format(name="hook_new")
        + '[[workspaces]]\nname = "acme"\nsources = ["shop"]\ndestinations = ["hook_new"]\n'
    )
    with capture_logs() as logs:
        changed = await node.reload(parse(_config(tmp_path, added)))
    assert changed == ["sources", "workspaces"]
    assert [s.name for s in node.config.sources][-1] == "shop"
    assert [d.name for d in node.config.destinations] == ["hook_a"]  # kept until a restart
    (workspace,) = node.config.workspaces
    assert workspace.sources == ["shop"]
    assert workspace.destinations == []  # hook_new is not built on this node yet
    assert {"event": "config_reload_needs_restart", "section": "destinations"} in [
        {k: v for k, v in e.items() if k in ("event", "section")} for e in logs
    ]
    assert node.governance.reloads == 1


async def test_a_plan_that_does_not_load_refuses_the_whole_config(tmp_path: Path) -> None:
    before = parse(_config(tmp_path))
    node = NodeConfig(before, Governance(before))
    missing = tmp_path / "missing.json"
    broken = (
        '[[sources]]\nname = "shop"\nwrite_key = "wk_shop"\ntracking_plan = "main"\n'
        f'[[tracking_plans]]\nname = "main"\npath = "{missing}"\n'
    )
    with pytest.raises(ConfigError):
        await node.reload(parse(_config(tmp_path, broken)))
    assert node.config is before
    assert node.reloads == 0
