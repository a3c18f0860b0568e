import pytest

from cdpd.config import Source
from cdpd.ingest.auth import WriteKeys, key_from_basic
from cdpd.ingest.errors import ApiError
from tests.helpers import basic_auth

KEYS = WriteKeys(
    [
        Source(name="web", write_key="wk_web"),
        Source(name="old", write_key="wk_old", enabled=False),
    ]
)


@pytest.mark.parametrize("colon", [True, False])
def test_basic_with_or_without_the_colon(colon: bool) -> None:
    assert key_from_basic(basic_auth("wk_web", colon=colon)) == "wk_web"


def test_bearer_is_not_a_write_key() -> None:
    assert key_from_basic("Bearer eyJhbGciOi") is None


def test_basic_that_is_not_base64_is_a_401() -> None:
    with pytest.raises(ApiError) as caught:
        key_from_basic("Basic %%%")
    assert caught.value.status == 401
    assert caught.value.code == "invalid_authorization"


def test_header_wins_over_body() -> None:
    assert KEYS.source_for(basic_auth("wk_web"), "wk_unknown").name == "web"


def test_body_key_when_no_header() -> None:
    assert KEYS.source_for(None, "wk_web").name == "web"
    assert KEYS.source_for("Bearer token", "wk_web").name == "web"


@pytest.mark.parametrize(
    ("header", "body", "status", "code"),
    [
        (None, None, 401, "missing_write_key"),
        (None, 42, 401, "missing_write_key"),
        (None, "wk_nope", 401, "invalid_write_key"),
        (basic_auth("wk_nope"), "wk_web", 401, "invalid_write_key"),
        (None, "wk_old", 403, "source_disabled"),
    ],
)
def test_refusals(header: str | None, body: object, status: int, code: str) -> None:
    with pytest.raises(ApiError) as caught:
        KEYS.source_for(header, body)
    assert (caught.value.status, caught.value.code) == (status, code)
