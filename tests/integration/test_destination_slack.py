"""The Slack destination against a local incoming webhook that keeps Slack's contract: the
Segment spec examples become the exact messages Slack's templates give, the message types
Slack's presets do not take are not routed, and Slack's text errors land in the outbox."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from tests import spec_examples as spec
from tests.contracts.base import Scripted
from tests.contracts.harness import attempts, check_config, deliver, destination, posting
from tests.contracts.slack import TOKEN_PATH, SlackWebhook
from tests.helpers import FakeClock, query
from tests.integration.test_delivery import MakeConfig, deliveries, recorded

TOKEN = TOKEN_PATH.rsplit("/", 1)[1]


def slack(url: str, extra: str = "", name: str = "slack") -> str:
    return destination("slack", name, webhook_url=url) + extra


async def test_spec_examples_become_slack_messages(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    async with SlackWebhook() as hook:
        entry = slack(hook.webhook_url)
        await deliver(make_config, http, entry, list(spec.ALL.values()), delivered=2)
    assert hook.messages == [
        {"text": "Identified 97980cfea0067"},
        {"text": "97980cfea0067 did Order Completed"},
    ]
    assert {call.headers["Content-Type"] for call in hook.calls} == {"application/json"}
    # Slack's presets take identify and track: the page, screen, group and alias are not routed.
    assert deliveries(data_dir, "slack") == [
        (spec.IDENTIFY["messageId"], "delivered", 1, None),
        (spec.ORDER_COMPLETED["messageId"], "delivered", 1, None),
    ]


async def test_an_action_sets_text_channel_and_sender(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    actions = """
[[destinations.actions]]
name = "big-orders"
subscribe = 'type = "track" and event = "Order Completed" and properties.total > 20'
[destinations.actions.mapping]
channel = "#alerts"
username = "cdpd"
icon_emoji = ":chart_with_upwards_trend:"
[destinations.actions.mapping.text]
"@template" = ":moneybag: {{properties.order_id}}: {{properties.total}} {{properties.currency}}"
"""
    anonymous = {**spec.ORDER_COMPLETED, "messageId": "anon-1", "properties": {"total": 5}}
    del anonymous["userId"]
    messages = [spec.ORDER_COMPLETED, anonymous, spec.IDENTIFY]
    async with SlackWebhook() as hook:
        await deliver(make_config, http, slack(hook.webhook_url, actions), messages, delivered=1)
    assert hook.messages == [
        {
            "text": ":moneybag: 50314b8e9bcf000000000000: 27.5 USD",
            "channel": "#alerts",
            "username": "cdpd",
            "icon_emoji": ":chart_with_upwards_trend:",
        }
    ]


async def test_anonymous_track_names_the_anonymous_id(
    make_config: MakeConfig, http: aiohttp.ClientSession
) -> None:
    anonymous = {**spec.ORDER_COMPLETED}
    del anonymous["userId"]
    async with SlackWebhook() as hook:
        await deliver(make_config, http, slack(hook.webhook_url), [anonymous], delivered=1)
    assert hook.messages == [{"text": "Anonymous 507f191e810c19729de860ea did Order Completed"}]


@pytest.mark.parametrize(
    ("channel", "status", "code"),
    [
        ("#nowhere", 404, "channel_not_found"),
        ("#old", 410, "channel_is_archived"),
        ("#announcements", 403, "action_prohibited"),
    ],
)
async def test_slack_refusals_are_dead_with_slacks_word(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    channel: str,
    status: int,
    code: str,
) -> None:
    actions = f"""
[[destinations.actions]]
name = "orders"
subscribe = 'type = "track"'
[destinations.actions.mapping]
channel = "{channel}"
"""
    async with SlackWebhook() as hook:
        entries = slack(hook.webhook_url, actions)
        await deliver(make_config, http, entries, [spec.ORDER_COMPLETED], recorded=1)
    assert deliveries(data_dir, "slack") == [(spec.ORDER_COMPLETED["messageId"], "dead", 1, status)]
    ((error,),) = query(data_dir, "SELECT last_error FROM deliveries")
    assert error == f"HTTP {status}: {code} (status {status} is not retried)"


async def test_429_and_rollup_errors_are_retried_and_the_url_never_shows(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    clock = FakeClock()
    async with SlackWebhook() as hook:
        hook.script.append(Scripted(429, "rate_limited", {"Retry-After": "30"}, "text/html"))
        # An answer that quotes the webhook URL back: the stored error must not repeat it.
        hook.script.append(Scripted(500, f"rollup_error at {TOKEN_PATH}", {}, "text/html"))
        entry = slack(hook.webhook_url)
        with capture_logs() as logs:
            async with posting(make_config, http, entry, [spec.ORDER_COMPLETED], clock) as lane:
                await recorded(lane, 1)
                ((last, upcoming),) = query(
                    data_dir, "SELECT last_attempt_at, next_attempt_at FROM deliveries"
                )
                assert upcoming > last  # not before Retry-After's 30 s
                clock.advance(31)
                await recorded(lane, 2)
                clock.advance(300)
                await recorded(lane, 3)
    assert attempts(data_dir) == [
        (429, "HTTP 429: rate_limited", "retrying"),
        (500, "HTTP 500: rollup_error at /services/T0CDPD/B0CDPD/***", "retrying"),
        (200, None, "delivered"),
    ]
    assert TOKEN not in repr(logs)
    assert len(hook.messages) == 1


async def test_an_empty_text_is_never_sent(
    make_config: MakeConfig, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    actions = """
[[destinations.actions]]
name = "coupons"
subscribe = 'type = "track"'
[destinations.actions.mapping]
text = { "@template" = "{{properties.no_such_thing}}" }
"""
    async with SlackWebhook() as hook:
        entries = slack(hook.webhook_url, actions)
        await deliver(make_config, http, entries, [spec.ORDER_COMPLETED], recorded=1)
    assert hook.calls == []
    assert query(data_dir, "SELECT state, last_error FROM deliveries") == [
        ("dead", "coupons: the message text is empty (the destination cannot take it as it is)")
    ]


def test_check_config_wants_a_webhook_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CDPD_TEST_SLACK_URL", raising=False)
    entry = destination("slack", "slack", webhook_url_env="CDPD_TEST_SLACK_URL")
    err = check_config(tmp_path, capsys, entry)
    assert "webhook_url_env names CDPD_TEST_SLACK_URL, which is not set" in err
    monkeypatch.setenv("CDPD_TEST_SLACK_URL", "https://hooks.slack.com/services/T/B/x")
    check_config(tmp_path, capsys, entry, exit_code=0)
