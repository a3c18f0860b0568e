"""`cdpd mappings test`: Segment's "test mapping" on a real config file; nothing is sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdpd import cli

CONFIG = """
[storage]
data_dir = "{data}"

[[sources]]
name = "web"
write_key = "wk_web"

[[destinations]]
name = "orders-hook"
type = "webhook"
url = "https://hooks.example.com/orders?token=abc"
secret = "s3cret"

[[destinations.actions]]
name = "big-orders"
subscribe = 'type = "track" and event = "Order Completed" and properties.total > 100'
[destinations.actions.mapping]
[destinations.actions.mapping.data]
order = {{ "@path" = "$.properties.order_id" }}
who = {{ "@liquid" = "{{{{ userId | upcase }}}}" }}

[[destinations.actions]]
name = "pages"
subscribe = 'type = "page"'

[[destinations.actions]]
name = "broken"
subscribe = 'type = "track"'
[destinations.actions.mapping]
data = {{ n = {{ "@path" = {{ "@path" = "$.properties.total" }} }} }}

[[destinations]]
name = "mp"
type = "mixpanel"
project_token = "tok-1"
api_secret = "secret-1"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cdpd.toml"
    path.write_text(CONFIG.format(data=tmp_path / "var"))
    return path


def test_shows_triggered_actions_and_their_requests(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = tmp_path / "message.json"
    message.write_text(
        json.dumps(
            {
                "type": "track",
                "event": "Order Completed",
                "userId": "u1",
                "messageId": "m-1",
                "properties": {"total": 150, "order_id": "o-9"},
            }
        )
    )
    assert _test("orders-hook", "--message", str(message), config=config) == 0
    report = json.loads(capsys.readouterr().out)
    big, pages, broken = report["actions"]
    assert big["triggered"]
    assert big["fields"] == {"data": {"order": "o-9", "who": "U1"}}
    (request,) = big["requests"]
    assert request["method"] == "POST"
    assert request["url"] == "https://hooks.example.com/orders?token=***"
    assert request["body"] == {"order": "o-9", "who": "U1"}
    assert request["headers"]["Idempotency-Key"] == "m-1"
    assert request["headers"]["X-Cdpd-Signature"] == "***"
    assert pages == {
        "action": "pages", "kind": "send", "subscribe": 'type = "page"', "triggered": False,
        "fields": None, "problem": None, "requests": None, "refused": None,
    }  # fmt: skip
    assert broken["triggered"]
    assert broken["requests"] is None
    assert broken["problem"] == "broken: mapping failed: @path: expected string, got number"


def test_the_sample_message_and_errors(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _test("orders-hook", config=config) == 0
    report = json.loads(capsys.readouterr().out)
    assert [a["triggered"] for a in report["actions"]] == [False, False, True]
    assert _test("nope", config=config) == 2
    assert "no destination is named 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    assert _test("orders-hook", "--message", str(bad), config=config) == 2
    assert "expected a JSON object" in capsys.readouterr().err


def _test(*args: str, config: Path) -> int:
    return cli.main(["mappings", "test", *args, "--config", str(config)])


def test_an_api_destination_with_its_presets(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _test("mp", config=config) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["type"] == "mixpanel"
    (purchase,) = [a for a in report["actions"] if a["triggered"]]
    (request,) = purchase["requests"]
    assert request["url"].startswith("https://api.mixpanel.com/import")
    assert request["headers"]["Authorization"] == "***"
    assert "secret-1" not in json.dumps(report)
    (event,) = request["body"]
    assert event["event"] == "Order Completed"
    assert event["properties"]["$insert_id"] == "test-message-1"


ROOTED = """
[[destinations]]
name = "flat"
type = "webhook"
url = "https://hooks.example.com/flat"

[[destinations.actions]]
name = "flat"
subscribe = 'type = "track"'
[destinations.actions.mapping]
data = { "@path" = "$.properties" }
[destinations.actions.mapping.__segment_internal_directive."@transform".apply.properties."@flatten"]
value = { "@path" = "$.properties" }
separator = "_"
"""


def test_the_root_level_directive(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text(config.read_text() + ROOTED)
    message = tmp_path / "message.json"
    message.write_text('{"type": "track", "event": "E", "properties": {"a": {"b": 1}, "c": [2]}}')
    assert _test("flat", "--message", str(message), config=config) == 0
    (action,) = json.loads(capsys.readouterr().out)["actions"]
    assert action["fields"] == {"data": {"a_b": 1, "c_0": 2}}
    assert action["requests"][0]["body"] == {"a_b": 1, "c_0": 2}


def test_check_config_warns_of_mappings_that_fail_every_message(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text(
        config.read_text()
        + '\n[[destinations]]\nname = "w"\ntype = "webhook"\nurl = "https://x.example"\n'
        '[[destinations.actions]]\nname = "w"\nsubscribe = \'type = "track"\'\n'
        '[destinations.actions.mapping]\ndata = { "@merge" = { objects = [] } }\n'
    )
    assert cli.main(["check-config", "--config", str(config)]) == 0
    assert (
        "destination 'w', action 'w'.mapping.data.@merge: needs 'direction'"
        in capsys.readouterr().err
    )
