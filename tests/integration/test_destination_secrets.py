"""No destination shows its credentials: against an API that refuses every request and quotes
all of it back (URL, headers, body), and against brokers and APIs that cannot be reached at all,
the errors stored in the outbox and the log lines carry none of the secrets the destinations were
given, nor their URL-quoted or Basic-auth forms."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from cdpd import logs
from cdpd.app import running
from tests.helpers import query
from tests.integration.test_delivery import MakeConfig, recorded, send, track
from tests.spec_examples import ALL

SECRETS = {
    "CDPD_T_HOOK_SECRET": "hook-signing-Zq81x",
    "CDPD_T_MIXPANEL_TOKEN": "mixpanel-token-Kp29w",
    "CDPD_T_MIXPANEL_SECRET": "mixpanel-secret-Ld44v",
    "CDPD_T_AMPLITUDE_KEY": "amplitude-key-Rb73u",
    "CDPD_T_GA4_SECRET": "ga4-secret-Hs56t+/=",
    "CDPD_T_CIO_SITE": "cio-site-Wn18s",
    "CDPD_T_CIO_KEY": "cio-key-Tx95r",
    "CDPD_T_SLACK_TOKEN": "slackTokenVm37q",
    "CDPD_T_REDIS_PW": "redis-pw-Qa62p",
    "CDPD_T_NATS_TOKEN": "nats-token-Ye40o",
    "CDPD_T_RABBIT_PW": "rabbit-pw-Uf83n",
    "CDPD_T_MQTT_PW": "mqtt-pw-Ic27m",
}
# Brokers are never reachable here (the discard port): their connection errors must not show
# the credentials either.
BROKERS = """
[[destinations]]
name = "redis"
type = "redis"
url_env = "CDPD_T_REDIS_URL"
timeout_s = 2

[[destinations]]
name = "nats"
type = "nats"
servers = ["nats://127.0.0.1:9"]
token_env = "CDPD_T_NATS_TOKEN"
timeout_s = 2

[[destinations]]
name = "rabbitmq"
type = "rabbitmq"
url = "amqp://guest@127.0.0.1:9/"
password_env = "CDPD_T_RABBIT_PW"
timeout_s = 2

[[destinations]]
name = "mqtt"
type = "mqtt"
port = 9
username = "cdpd"
password_env = "CDPD_T_MQTT_PW"
timeout_s = 2
"""
HTTP_APIS = {"hook", "mixpanel", "amplitude", "ga4", "customerio", "slack"}


def slack_url(base: str) -> str:
    return f"{base}/services/T0001/B0001/{SECRETS['CDPD_T_SLACK_TOKEN']}"


def destinations(base: str) -> str:
    return (
        f"""
[[destinations]]
name = "hook"
type = "webhook"
url = "{base}/hook"
secret_env = "CDPD_T_HOOK_SECRET"

[[destinations]]
name = "mixpanel"
type = "mixpanel"
api_url = "{base}"
project_token_env = "CDPD_T_MIXPANEL_TOKEN"
api_secret_env = "CDPD_T_MIXPANEL_SECRET"

[[destinations]]
name = "amplitude"
type = "amplitude"
api_url = "{base}/2/httpapi"
identify_url = "{base}/identify"
api_key_env = "CDPD_T_AMPLITUDE_KEY"

[[destinations]]
name = "ga4"
type = "ga4"
api_url = "{base}/mp/collect"
measurement_id = "G-TEST123"
api_secret_env = "CDPD_T_GA4_SECRET"

[[destinations]]
name = "customerio"
type = "customerio"
api_url = "{base}"
site_id_env = "CDPD_T_CIO_SITE"
api_key_env = "CDPD_T_CIO_KEY"

[[destinations]]
name = "slack"
type = "slack"
webhook_url_env = "CDPD_T_SLACK_URL"
rate_limit_per_s = 0
"""
        + BROKERS
    )


def forms(value: str) -> set[str]:
    return {value, quote(value, safe=""), quote(value)}


def every_form() -> set[str]:
    found = set().union(*(forms(v) for v in SECRETS.values()))
    pairs = [
        (SECRETS["CDPD_T_MIXPANEL_SECRET"], ""),
        (SECRETS["CDPD_T_CIO_SITE"], SECRETS["CDPD_T_CIO_KEY"]),
    ]
    found |= {base64.b64encode(f"{user}:{password}".encode()).decode() for user, password in pairs}
    return found


async def tattletale(request: web.Request) -> web.Response:
    """An API that refuses everything, quoting back all it was sent."""
    body = await request.read()
    told = f"{request.method} {request.url} {dict(request.headers)} {body.decode(errors='replace')}"
    return web.Response(status=400, text=told)


@pytest.fixture
async def refusing_api() -> str:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", tattletale)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


@pytest.mark.parametrize("reachable", [True, False], ids=["refused", "unreachable"])
async def test_no_destination_shows_its_credentials(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    refusing_api: str,
    reachable: bool,
) -> None:
    base = refusing_api if reachable else "http://127.0.0.1:9"  # the discard port: refused
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CDPD_T_SLACK_URL", slack_url(base))
    redis_url = f"redis://:{SECRETS['CDPD_T_REDIS_PW']}@127.0.0.1:9/0"
    monkeypatch.setenv("CDPD_T_REDIS_URL", redis_url)
    messages = [track(1, properties={"total": 10}), *ALL.values()]
    libraries = logs.FromLogging()  # what the libraries log reaches the daemon's log too
    logging.getLogger().addHandler(libraries)
    try:
        with capture_logs() as logged:
            async with running(make_config(destinations(base))) as server:
                await send(http, server, messages)
                for lane in server.delivery.lanes.values():
                    await recorded(lane, 1)
    finally:
        logging.getLogger().removeHandler(libraries)
    rows = query(data_dir, "SELECT destination, status, error FROM attempts")
    failed = {destination for destination, _, error in rows if error}
    assert failed == set(server.delivery.lanes)  # every destination failed, and said why
    answered = {destination for destination, status, _ in rows if status == 400}
    assert answered == (HTTP_APIS if reachable else set())
    errors = [error for _, _, error in rows if error]
    shown = [
        (form, text)
        for text in errors + [repr(line) for line in logged]
        for form in every_form()
        if form in text
    ]
    assert shown == []


HOOK_TOKEN = "hook-bearer-Gz51k"
HOOK_QUERY_TOKEN = "hook-query-Mq72j"
HOOK_PASSWORD = "hook-password-Np63i"


@pytest.mark.parametrize("auth", ["header", "url"])
async def test_an_echoing_webhook_shows_no_credential_anywhere(
    make_config: MakeConfig,
    http: aiohttp.ClientSession,
    data_dir: Path,
    refusing_api: str,
    auth: str,
) -> None:
    """The webhook's Authorization header, the password in its URL and a `?token=` query value
    are scrubbed from attempts, the ledger, the log and the admin API."""
    scheme, address = refusing_api.split("://")
    if auth == "header":
        url = f"{refusing_api}/hook?token={HOOK_QUERY_TOKEN}&team=growth"
        headers = f'headers = {{ Authorization = "Bearer {HOOK_TOKEN}", X-Team = "growth" }}\n'
    else:
        url = f"{scheme}://hookuser:{HOOK_PASSWORD}@{address}/hook"
        url += f"?token={HOOK_QUERY_TOKEN}&team=growth"
        headers = ""
    admin = '[admin]\ntoken = "admin-token-for-the-test"\n'
    hook = f'[[destinations]]\nname = "hook"\ntype = "webhook"\nurl = "{url}"\n{headers}'
    with capture_logs() as logged:
        async with running(make_config(admin + hook)) as server:
            await send(http, server, [track(1)])
            await recorded(server.delivery.lanes["hook"], 1)
            async with http.get(
                f"{server.url}/admin/deliveries",
                headers={"Authorization": "Bearer admin-token-for-the-test"},
            ) as response:
                admin_text = await response.text()
    attempts = [error for (error,) in query(data_dir, "SELECT error FROM attempts") if error]
    ledger = [e for (e,) in query(data_dir, "SELECT last_error FROM deliveries") if e]
    assert attempts  # it failed, and said why (the receiver's answer, scrubbed)
    assert "growth" in attempts[0]  # what is not a credential is kept
    secrets = {HOOK_TOKEN, HOOK_QUERY_TOKEN, HOOK_PASSWORD}
    secrets |= {base64.b64encode(f"hookuser:{HOOK_PASSWORD}".encode()).decode()}
    texts = attempts + ledger + [admin_text] + [repr(line) for line in logged]
    assert [(s, t) for t in texts for s in secrets if s in t] == []


def test_credentials_in_the_url_and_an_authorization_header_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cdpd import cli

    path = tmp_path / "cdpd.toml"
    path.write_text(
        '[[destinations]]\nname = "hook"\ntype = "webhook"\n'
        'url = "https://u:p@hooks.example.com/in"\nheaders = { Authorization = "Bearer x" }\n'
    )
    assert cli.main(["check-config", "--config", str(path)]) == cli.EXIT_USAGE
    assert "url has credentials (user:password@) and headers has an Authorization header" in (
        capsys.readouterr().err
    )
