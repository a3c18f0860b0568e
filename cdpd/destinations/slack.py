"""The Slack destination: one message per request to an incoming webhook.

`POST <webhook_url>` with `{"text": ..., "channel": ..., "username": ..., "icon_emoji": ...,
"icon_url": ...}` (fields without a value are left out; `channel`, `username` and the icons are
honoured by legacy webhooks only, app webhooks post as their app to their own channel). Slack
answers `200 ok`, or an error as plain text: `400 invalid_payload`/`no_text`, `403
action_prohibited`, `404 channel_not_found`, `410 channel_is_archived`, `429` with Retry-After,
`500 rollup_error`. The text becomes the delivery's error; 429 and 5xx are retried, the rest
are dead at once. The webhook URL is the credential: it is never logged nor put in an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from cdpd import __version__
from cdpd.destinations import http
from cdpd.destinations.actions import Action, ActionKind, Field, Prepared, Preset
from cdpd.destinations.base import Result, required_secret
from cdpd.destinations.settings import SlackDestination
from cdpd.settings import ConfigError

# Segment's Slack templates: "Identified {{userId}}" for identifies, "<who> did <event>" for
# track events (anonymous visitors by their anonymousId).
DEFAULT_TEXT: dict[str, Any] = {
    "@if": {
        "exists": {"@path": "$.event"},
        "then": {
            "@if": {
                "exists": {"@path": "$.userId"},
                "then": {"@template": "{{userId}} did {{event}}"},
                "else": {"@template": "Anonymous {{anonymousId}} did {{event}}"},
            }
        },
        "else": {"@template": "Identified {{userId}}"},
    }
}
KINDS = {
    "post_message": ActionKind(
        "post_message",
        "Post a message to the webhook's channel",
        {
            "text": Field(
                "the message, in Slack's mrkdwn (a @template fills in message fields)",
                default=DEFAULT_TEXT,
                required=True,
            ),
            "channel": Field("another channel to post to, e.g. #alerts (legacy webhooks only)"),
            "username": Field("the sender's name shown (legacy webhooks only)"),
            "icon_emoji": Field("the sender's icon as an emoji, e.g. :chart_with_upwards_trend:"),
            "icon_url": Field("the sender's icon as an image URL"),
        },
    )
}
PRESETS = (
    Preset("Post track events", "post_message", 'type = "track"'),
    Preset("Post identifies", "post_message", 'type = "identify"'),
)
_MESSAGE_FIELDS = ("text", "channel", "username", "icon_emoji", "icon_url")
_encoder = msgspec.json.Encoder()


class Slack:
    def __init__(self, config: SlackDestination, actions: list[Action]) -> None:
        self.name = config.name
        self.actions = actions
        url = required_secret(
            config.name, config.webhook_url, config.webhook_url_env, "webhook_url"
        )
        if not url.startswith(("https://", "http://")):
            raise ConfigError(f"destination {config.name!r}: the webhook URL must be http(s)")
        self._url = url
        # The URL's last part is the webhook's token: an answer that quotes the path loses it.
        token = urlsplit(url).path.rsplit("/", 1)[-1]
        self._secrets = [url] + ([token] if len(token) >= 8 else [])
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self._headers = {"Content-Type": "application/json", "User-Agent": f"cdpd/{__version__}"}

    async def send(self, session: aiohttp.ClientSession, items: Sequence[Prepared]) -> list[Result]:
        return list(await asyncio.gather(*(self._post(session, item) for item in items)))

    async def _post(self, session: aiohttp.ClientSession, item: Prepared) -> Result:
        body = message(item.fields)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            return Result(None, f"{item.action}: the message text is empty", invalid=True)
        answer = await http.request(
            session,
            "POST",
            self._url,
            body=_encoder.encode(body),
            headers=self._headers,
            limit=self._timeout,
            secrets=self._secrets,
        )
        return answer.result


def message(fields: dict[str, Any]) -> dict[str, Any]:
    """The webhook's JSON body from an action's fields: text as text, the rest if given."""
    body: dict[str, Any] = {}
    for name in _MESSAGE_FIELDS:
        value = fields.get(name)
        if value is None or value == "":
            continue
        body[name] = value if isinstance(value, str) else _encoder.encode(value).decode()
    return body
