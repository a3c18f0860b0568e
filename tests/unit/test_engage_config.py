"""`[[audiences]]` and `[[computed_traits]]` in the config: validated by check-config with
errors naming the key and pointing at the character of a query."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdpd import cli
from cdpd.config import ConfigError, parse

DESTINATION = '[[destinations]]\nname = "hook"\ntype = "webhook"\nurl = "http://127.0.0.1:9/x"\n'
GOOD = (
    DESTINATION
    + """
[engage]
space_id = "main"

[[audiences]]
key = "repeat_buyers"
query = "event('Order Completed').within(30 days).count() >= 2"
historical = false
[[audiences.destinations]]
name = "hook"
send_track = true
audience_entered_event = "Became Repeat Buyer"

[[computed_traits]]
key = "top_category"
query = "event('Product Viewed').within(7 days).mode(property('category'), 2)"
[[computed_traits.destinations]]
name = "hook"
send_identify = false
send_track = true
trait_computed_event = "Top Category Changed"
"""
)


def test_definitions_load() -> None:
    config = parse(GOOD)
    assert config.engage.space_id == "main"
    (audience,) = config.audiences
    assert audience.key == "repeat_buyers"
    assert not audience.historical
    assert audience.include_anonymous is False
    assert audience.destinations[0].audience_entered_event == "Became Repeat Buyer"
    assert audience.destinations[0].audience_exited_event == "Audience Exited"
    assert config.computed_traits[0].destinations[0].trait_computed_event == "Top Category Changed"


def _audience(key: str, query: str, extra: str = "") -> str:
    return f'[[audiences]]\nkey = "{key}"\nquery = """{query}"""\n{extra}'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            _audience("buyers", "event('Order Completed').count( >= 1"),
            "audiences[0].query: line 1, column 33: expected a function such as event(...) or "
            "trait(...), or a value, found '>='\n"
            "    event('Order Completed').count( >= 1\n"
            "                                    ^",
        ),
        (_audience("Buyers", "trait('a') = 1"), "audiences[0].key: 'Buyers' is not snake_case"),
        (
            _audience("dupe", "trait('a') = 1") + _audience("dupe", "trait('b') = 1"),
            "audiences[1].key: 'dupe' is already used by audiences[0]",
        ),
        (
            _audience("dupe", "trait('a') = 1")
            + '[[computed_traits]]\nkey = "dupe"\nquery = "trait(\'a\')"\n',
            "computed_traits[0].key: 'dupe' is already used by audiences[0]",
        ),
        (
            _audience("buyers", "trait('a') = 1", '[[audiences.destinations]]\nname = "nope"\n'),
            "audiences[0].destinations[0].name: no destination is named 'nope' (known: none)",
        ),
        (
            _audience("counts", "event('x').count()"),
            "audiences[0].query: an audience query must end in a condition",
        ),
        (
            '[[computed_traits]]\nkey = "n"\nquery = "event(\'x\').count() > 1"\n',
            "computed_traits[0].query: a computed trait's query must end in a value",
        ),
        (
            _audience("a", "trait('b') = true") + _audience("b", "trait('a') = true"),
            "definitions read each other in a cycle: a -> b -> a",
        ),
        (
            DESTINATION
            + _audience(
                "vips",
                "trait('plan') = 'pro'",
                '[[audiences.destinations]]\nname = "hook"\nsend_group = true\n',
            ),
            "audiences[0].destinations[0].send_group: only an account audience (ANY or ALL) "
            "sends Group calls",
        ),
        (
            _audience("a", "trait('x') = 1", "sent = true\n"),
            "audiences[0]: Object contains unknown field `sent`",
        ),
    ],
)
def test_errors_name_the_key_and_point_at_the_character(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text, origin="cdpd.toml")
    assert message in str(caught.value)


def test_an_account_audience_may_send_group_calls() -> None:
    text = _audience(
        "pro_accounts",
        "ANY trait('plan') = 'pro'",
        '[[audiences.destinations]]\nname = "hook"\nsend_group = true\nsend_identify = false\n',
    )
    (audience,) = parse(DESTINATION + text).audiences
    (destination,) = audience.destinations
    assert (destination.send_group, destination.send_identify) == (True, False)


def test_check_config_prints_the_caret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cdpd.toml"
    path.write_text(_audience("buyers", "event('x').within(7 weeks).count() >= 1"))
    assert cli.main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown time unit 'weeks'" in err
    assert "\n    event('x').within(7 weeks).count() >= 1\n" + " " * 24 + "^" in err
    path.write_text(GOOD)
    assert cli.main(["check-config", "--config", str(path)]) == 0
