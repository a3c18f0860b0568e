"""Forwarding a deletion to the destinations whose APIs can delete a user:

- Amplitude: `POST {deletion_url}` (the User Privacy API, `/api/2/deletions/users`), Basic auth
  with the API key and secret key, JSON `{"user_ids", "requester", "ignore_invalid_id",
  "delete_from_org"}`, at most 100 ids a request; 200 with the deletion jobs.
- Mixpanel: `POST {deletion_url}?token=<project token>` (the GDPR API v3,
  `/api/app/data-deletions/v3.0/`), `Authorization: Bearer <GDPR OAuth token>` (or a service
  account's Basic auth), JSON `{"distinct_ids", "compliance_type": "GDPR"}`, at most 2,000 ids
  a request; 200 `{"status": "ok", "results": {"task_id"}}`.
- Customer.io: `DELETE {api_url}/api/v1/customers/{id}` (Track API, Basic site id and API
  key), one person a request; 200 `{}`.
- Webhook: a Segment `delete` message per user, POSTed (and signed) as the webhook posts
  messages.

Each forward returns one `Sent`: the users the vendor took, or the first failing answer (its
status decides, by the delivery retry policy, whether the target is tried again).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Sequence
from urllib.parse import quote

import aiohttp
import msgspec

from cdpd import __version__
from cdpd.destinations import http
from cdpd.destinations.base import required_secret, secret
from cdpd.destinations.settings import (
    AmplitudeDestination,
    CustomerIoDestination,
    Destination,
    MixpanelDestination,
    WebhookDestination,
)
from cdpd.destinations.webhook import sign
from cdpd.model.timestamps import format_ms, now_ms

AMPLITUDE_MAX_IDS = 100
MIXPANEL_MAX_IDS = 2000
REQUESTER = "cdpd"
_encoder = msgspec.json.Encoder()
_AGENT = f"cdpd/{__version__}"


class Sent(msgspec.Struct, frozen=True):
    users: int  # how many users the vendor took
    status: int | None = None  # the failing answer's status, None for a network error
    error: str | None = None
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def forward(
    session: aiohttp.ClientSession,
    destination: Destination,
    user_ids: Sequence[str],
    regulation_id: str,
) -> Sent:
    limit = aiohttp.ClientTimeout(total=destination.timeout_s)
    if isinstance(destination, AmplitudeDestination):
        return await _amplitude(session, destination, user_ids, limit)
    if isinstance(destination, MixpanelDestination):
        return await _mixpanel(session, destination, user_ids, limit)
    if isinstance(destination, CustomerIoDestination):
        return await _customerio(session, destination, user_ids, limit)
    if isinstance(destination, WebhookDestination):
        return await _webhook(session, destination, user_ids, regulation_id, limit)
    raise ValueError(f"{destination.__struct_config__.tag} has no user deletion API")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _failed(done: int, answer: http.Answer) -> Sent:
    failure = answer.failure()
    return Sent(done, failure.status, failure.error, failure.retry_after_s)


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


async def _amplitude(
    session: aiohttp.ClientSession,
    config: AmplitudeDestination,
    user_ids: Sequence[str],
    limit: aiohttp.ClientTimeout,
) -> Sent:
    key = required_secret(config.name, config.api_key, config.api_key_env, "api_key")
    secret_key = required_secret(
        config.name, config.secret_key, config.secret_key_env, "secret_key"
    )
    auth = _basic(key, secret_key)
    done = 0
    for chunk in _chunks(user_ids, AMPLITUDE_MAX_IDS):
        body = _encoder.encode(
            {
                "user_ids": list(chunk),
                "requester": REQUESTER,
                "ignore_invalid_id": "True",
                "delete_from_org": "False",
            }
        )
        headers = {"Content-Type": "application/json", "Authorization": auth, "User-Agent": _AGENT}
        answer = await http.request(
            session,
            "POST",
            config.deletion_url,
            body=body,
            headers=headers,
            limit=limit,
            secrets=(key, secret_key),
        )
        if not answer.ok:
            return _failed(done, answer)
        done += len(chunk)
    return Sent(done)


async def _mixpanel(
    session: aiohttp.ClientSession,
    config: MixpanelDestination,
    user_ids: Sequence[str],
    limit: aiohttp.ClientTimeout,
) -> Sent:
    token = required_secret(
        config.name, config.project_token, config.project_token_env, "project_token"
    )
    oauth = secret(config.name, config.gdpr_token, config.gdpr_token_env, "gdpr_token")
    headers = {"Content-Type": "application/json", "User-Agent": _AGENT}
    hidden = [token]
    if oauth:
        headers["Authorization"] = f"Bearer {oauth}"
        hidden.append(oauth)
    else:
        account = required_secret(
            config.name,
            config.service_account_secret,
            config.service_account_secret_env,
            "service_account_secret",
        )
        user = config.service_account_username or ""
        headers["Authorization"] = _basic(user, account)
        hidden.append(account)
    done = 0
    for chunk in _chunks(user_ids, MIXPANEL_MAX_IDS):
        body = _encoder.encode({"distinct_ids": list(chunk), "compliance_type": "GDPR"})
        answer = await http.request(
            session,
            "POST",
            config.deletion_url,
            body=body,
            headers=headers,
            params={"token": token},
            limit=limit,
            secrets=hidden,
        )
        if not answer.ok:
            return _failed(done, answer)
        done += len(chunk)
    return Sent(done)


async def _customerio(
    session: aiohttp.ClientSession,
    config: CustomerIoDestination,
    user_ids: Sequence[str],
    limit: aiohttp.ClientTimeout,
) -> Sent:
    site_id = required_secret(config.name, config.site_id, config.site_id_env, "site_id")
    api_key = required_secret(config.name, config.api_key, config.api_key_env, "api_key")
    headers = {
        "Authorization": _basic(site_id, api_key),
        "User-Agent": _AGENT,
    }
    base = config.api_url.rstrip("/")
    done = 0
    for user_id in user_ids:
        answer = await http.request(
            session,
            "DELETE",
            f"{base}/api/v1/customers/{quote(user_id, safe='')}",
            body=b"",
            headers=headers,
            limit=limit,
            secrets=(api_key,),
        )
        if not answer.ok and answer.status != 404:  # a person never created is not there
            return _failed(done, answer)
        done += 1
    return Sent(done)


def delete_message(user_id: str, regulation_id: str, at_ms: int) -> dict[str, object]:
    """A Segment `delete` message, as Segment sends webhooks one for a deletion request."""
    at = format_ms(at_ms)
    return {
        "type": "delete",
        "userId": user_id,
        "messageId": f"delete-{regulation_id}-{uuid.uuid5(uuid.NAMESPACE_URL, user_id).hex}",
        "channel": "server",
        "context": {"library": {"name": "cdpd", "version": __version__}},
        "integrations": {},
        "timestamp": at,
        "receivedAt": at,
        "originalTimestamp": at,
        "sentAt": at,
    }


async def _webhook(
    session: aiohttp.ClientSession,
    config: WebhookDestination,
    user_ids: Sequence[str],
    regulation_id: str,
    limit: aiohttp.ClientTimeout,
) -> Sent:
    key = secret(config.name, config.secret, config.secret_env, "secret")
    done = 0
    for user_id in user_ids:
        message = delete_message(user_id, regulation_id, now_ms())
        body = _encoder.encode(message)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": _AGENT,
            **config.headers,
            "Idempotency-Key": str(message["messageId"]),
            "X-Cdpd-Message-Id": str(message["messageId"]),
        }
        if key:
            timestamp = str(int(time.time()))
            headers["X-Cdpd-Timestamp"] = timestamp
            headers["X-Cdpd-Signature"] = "v1=" + sign(key.encode(), timestamp, body)
        answer = await http.request(
            session, "POST", config.url, body=body, headers=headers, limit=limit
        )
        if not answer.ok:
            return _failed(done, answer)
        done += 1
    return Sent(done)
