"""The console's pure parts: the catalog's forms and fragments, secret masking, the sign-in
limit, the snippet's quoting, roles, and the workspace checks of the config."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cdpd import config as cdpd_config
from cdpd.config import ConfigError
from cdpd.console import access, catalog
from cdpd.console.debugger import PER_REQUEST, Tap
from cdpd.console.flow import minute_of
from cdpd.console.snippet import snippet
from cdpd.model.rows import OutboxRow


def test_every_catalog_type_has_a_form() -> None:
    for info in catalog.types():
        fields = catalog.form(info.type)
        assert all(f.name not in ("name", "type") for f in fields)
    webhook = {f.name: f for f in catalog.form("webhook")}
    assert webhook["url"].required
    assert webhook["secret"].kind == "password"
    assert webhook["secret_env"].kind == "text"


def test_a_valid_form_becomes_a_fragment_that_loads() -> None:
    settings = catalog.read_form(
        "webhook",
        "orders",
        {"url": "https://example.com/hook", "batch_size": "10", "headers": '{"X-A": "b"}'},
    )
    config = cdpd_config.parse("")
    catalog.check(config, settings)
    text = catalog.fragment(settings)
    loaded = tomllib.loads(text)["destinations"][0]
    assert loaded == {
        "name": "orders",
        "type": "webhook",
        "url": "https://example.com/hook",
        "batch_size": 10,
        "headers": {"X-A": "b"},
    }
    cdpd_config.parse(text)  # check-config accepts it as a whole file too


@pytest.mark.parametrize(
    ("submitted", "error"),
    [
        ({"batch_size": "ten"}, "batch_size: expected integer"),
        ({"headers": "{not json"}, "headers: expected"),
        ({"url": "https://x.example", "batch_size": "0"}, "batch_size"),
        ({}, "url"),
    ],
)
def test_a_bad_form_says_which_field(submitted: dict[str, str], error: str) -> None:
    def read_and_check() -> None:
        settings = catalog.read_form("webhook", "orders", submitted)
        catalog.check(cdpd_config.parse(""), settings)

    with pytest.raises(ConfigError, match=error):
        read_and_check()


def test_fragments_are_written_whole_and_named_safely(tmp_path: Path) -> None:
    written = catalog.write_fragment(tmp_path / "conf.d", "orders", "[[destinations]]\n")
    assert written.read_text() == "[[destinations]]\n"
    assert [p.name for p in (tmp_path / "conf.d").iterdir()] == ["destination-orders.toml"]
    with pytest.raises(ConfigError):
        catalog.write_fragment(tmp_path / "conf.d", "../escape", "")


def test_secrets_are_masked() -> None:
    config = cdpd_config.parse(
        '[[destinations]]\nname = "h"\ntype = "webhook"\nurl = "https://x.example"\n'
        'secret = "s3cret"\nheaders = { Authorization = "Bearer abc", X-Team = "growth" }\n'
    )
    shown = dict(catalog.masked(config.destinations[0]))
    assert shown["secret"] == catalog.MASK
    assert "abc" not in shown["headers"]
    assert "growth" in shown["headers"]


def test_the_sign_in_limit_counts_per_key_within_the_window() -> None:
    now = [0.0]
    limit = access.SigninLimit(3, 60, clock_s=lambda: now[0])
    for _ in range(3):
        assert not limit.blocked("name:ada", "address:1")
        limit.failed("name:ada", "address:1")
    assert limit.blocked("name:ada")
    assert limit.blocked("name:bob", "address:1")  # the address is over too
    assert not limit.blocked("name:bob", "address:2")
    now[0] = 61.0
    assert not limit.blocked("name:ada", "address:1")


def test_roles_are_ordered() -> None:
    person = access.Principal("ada", {"acme": "member"})
    assert person.may("acme", "read-only")
    assert person.may("acme", "member")
    assert not person.may("acme", "owner")
    assert not person.may("globex", "read-only")


def test_passwords_are_argon2_hashes() -> None:
    hashed = access.hash_password("correct horse battery")
    assert hashed.startswith("$argon2id$")
    assert access.verify_password(hashed, "correct horse battery")
    assert not access.verify_password(hashed, "wrong")
    assert not access.verify_password("not a hash", "wrong")


def test_the_snippet_cannot_be_broken_out_of() -> None:
    text = snippet("https://cdpd.example/", 'wk"</script><script>alert(1)')
    assert "</script><script>" not in text
    assert 'analytics._cdn="https://cdpd.example"' in text
    assert text.count("</script>") == 1


def test_minutes() -> None:
    assert minute_of("2026-01-02T03:04:05.678Z") == "2026-01-02T03:04Z"


def _config(workspaces: str) -> str:
    return (
        '[[sources]]\nname = "web"\nwrite_key = "k1"\n'
        '[[sources]]\nname = "app"\nwrite_key = "k2"\n' + workspaces
    )


def test_a_workspace_lists_only_what_exists_and_nothing_twice() -> None:
    cdpd_config.parse(_config('[[workspaces]]\nname = "a"\nsources = ["web"]\n'))
    with pytest.raises(ConfigError, match=r"workspaces\[0\].sources: no source is named 'nope'"):
        cdpd_config.parse(_config('[[workspaces]]\nname = "a"\nsources = ["nope"]\n'))
    with pytest.raises(ConfigError, match="already belongs to workspace 'a'"):
        cdpd_config.parse(
            _config(
                '[[workspaces]]\nname = "a"\nsources = ["web"]\n'
                '[[workspaces]]\nname = "b"\nsources = ["web"]\n'
            )
        )
    with pytest.raises(ConfigError, match="is used twice"):
        cdpd_config.parse(_config('[[workspaces]]\nname = "a"\n[[workspaces]]\nname = "a"\n'))


def _row(n: int) -> OutboxRow:
    return OutboxRow(f"m{n}", "web", "track", "E", "u", None, "2026-01-01T00:00:00.000Z", "{}")


def test_the_tap_costs_nothing_unwatched_and_keeps_a_bounded_sample() -> None:
    tap = Tap()
    assert not tap.watched
    tap.offer("web", [_row(1)])  # nobody watches: nothing is kept anywhere
    watcher = tap.watch("web", capacity=30)
    other = tap.watch("app", capacity=30)
    assert tap.watched
    tap.offer("web", [_row(n) for n in range(100)])
    assert [r.message_id for r in watcher.messages] == [f"m{n}" for n in range(PER_REQUEST)]
    assert not other.messages
    tap.offer("web", [_row(n) for n in range(100, 200)])
    assert len(watcher.messages) == 30  # the oldest went first
    assert watcher.messages[-1].message_id == f"m{100 + PER_REQUEST - 1}"
    assert watcher.offered == 200
    tap.unwatch(watcher)
    tap.unwatch(other)
    assert not tap.watched
