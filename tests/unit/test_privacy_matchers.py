"""Matchers: Segment's defaults on keys, exact and similar (Sørensen-Dice) matching, custom
matchers with synonyms and regexes, value detectors (Luhn for card numbers), masking."""

from __future__ import annotations

import pytest

from cdpd import config as cdpd_config
from cdpd.privacy.matchers import Matchers, dice, luhn, mask, words
from cdpd.privacy.settings import PrivacyConfig


def matchers(toml: str = "") -> Matchers:
    return Matchers(cdpd_config.parse(toml).privacy)


def suggested(m: Matchers, key: str) -> tuple[str, str] | None:
    found = m.for_key(key)
    return (found.class_, found.matcher) if found else None


def test_words_split_every_spelling_of_a_key() -> None:
    assert words("creditCardNumber") == "credit card number"
    assert words("credit_card-number") == "credit card number"
    assert words("IPAddress") == "ip address"
    assert words("address2") == "address 2"


def test_dice_is_godices_bigram_formula() -> None:
    assert dice("night", "nacht") == 0.25  # the textbook example: ni gh ht / na ac ch ht
    assert dice("credit card", "creditcard") == 1.0  # spaces do not count
    assert dice("a", "ab") == 0.0
    assert dice("token", "tokens") == pytest.approx(8 / 9)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("password", ("red", "password")),
        ("creditCard", ("red", "credit card")),
        ("social_security_number", ("red", "social security number")),
        ("passport", ("red", "passport")),
        ("email", ("yellow", "email")),
        ("userEmail", ("yellow", "email")),  # a run of the key's words resembles the term
        ("shipping_city", ("yellow", "city")),
        ("zipCode", ("yellow", "zipcode")),
        ("phone", ("yellow", "phone")),
        ("tokens", ("red", "token")),  # similar: 0.89
        ("order_id", None),
        ("revenue", None),
        ("zip", ("yellow", "zipcode")),  # a synonym
        ("velocity", None),  # 0.6 against "city": not over 0.7
    ],
)
def test_default_matchers_on_keys(key: str, expected: tuple[str, str] | None) -> None:
    assert suggested(matchers(), key) == expected


def test_red_wins_over_yellow() -> None:
    assert suggested(matchers(), "credit_card_holder_name") == ("red", "credit card")


def test_custom_matchers_exact_similar_regex_and_synonyms() -> None:
    m = matchers(
        "[[privacy.matchers]]\nname = 'member number'\nclass = 'red'\nmatch = 'exact'\n"
        "synonyms = ['membership id']\n"
        "[[privacy.matchers]]\nname = 'loyalty tier'\nclass = 'green'\nmatch = 'similar'\n"
        "[[privacy.matchers]]\nname = 'internal'\nclass = 'yellow'\nmatch = 'regex'\n"
        "pattern = '^x_'\n"
    )
    assert suggested(m, "memberNumber") == ("red", "member number")
    assert suggested(m, "membership_id") == ("red", "member number")
    assert suggested(m, "member_numbers") is None  # exact means exact
    assert suggested(m, "loyalty_tiers") == ("green", "loyalty tier")
    assert suggested(m, "x_score") == ("yellow", "internal")


def test_a_custom_matcher_replaces_the_default_of_its_name() -> None:
    m = matchers("[[privacy.matchers]]\nname = 'name'\nclass = 'green'\n")
    assert suggested(m, "name") == ("green", "name")
    assert suggested(matchers("[privacy]\ndefault_matchers = false\n"), "password") is None


def test_luhn() -> None:
    assert luhn("4111111111111111")
    assert luhn("79927398713")
    assert not luhn("4111111111111112")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("jane@example.com", ("yellow", "email")),
        ("+44 20 7946 0958", ("yellow", "phone")),
        ("(555) 123-4567", ("yellow", "phone")),
        ("4111 1111 1111 1111", ("red", "credit card")),
        ("4111-1111-1111-1111", ("red", "credit card")),
        (4111111111111111, ("red", "credit card")),
        ("4111111111111112", None),  # fails the Luhn check
        ("10.0.0.1", ("yellow", "ip")),
        ("2001:db8::1", ("yellow", "ip")),
        ("123-45-6789", ("red", "social security number")),
        ("AB 12 34 56 C", ("red", "social security number")),  # a UK national insurance number
        ("2026-12-06", None),
        ("1.2.3", None),
        ("hello", None),
        (3.5, None),
    ],
)
def test_value_detectors(value: object, expected: tuple[str, str] | None) -> None:
    found = matchers().for_value(value)
    assert ((found.class_, found.matcher) if found else None) == expected


def test_custom_value_matchers() -> None:
    m = matchers(
        "[[privacy.matchers]]\nname = 'employee id'\nclass = 'red'\non = 'value'\n"
        "match = 'regex'\npattern = '^EMP-\\d{6}$'\n"
    )
    found = m.for_value("EMP-123456")
    assert found is not None
    assert (found.class_, found.on) == ("red", "value")


def test_a_parent_key_classifies_its_fields() -> None:
    found = matchers().for_field("properties.credit_card.number", ["credit_card", "number"], 7)
    assert found is not None
    assert found.class_ == "red"


def test_spec_fields_that_name_software_are_not_personal() -> None:
    m = matchers()
    assert m.for_field("context.library.name", ["library", "name"], "analytics-python") is None
    found = m.for_field("context.traits.name", ["traits", "name"], "Jane")
    assert found is not None
    assert found.class_ == "yellow"


def test_mask_shows_the_shape_not_the_value() -> None:
    assert mask("jane@example.com") == "j***@*******.**m"
    assert mask("4111 1111 1111 1111") == "4*** **** **** ***1"
    assert mask("abc") == "***"
    assert mask(None) is None
    assert mask(True) == "true"
    assert mask({"a": 1}) is None


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ("[[privacy.matchers]]\nname = 'x'\nclass = 'red'\nmatch = 'regex'\n", "needs a pattern"),
        (
            "[[privacy.matchers]]\nname = 'x'\nclass = 'red'\nmatch = 'regex'\npattern = '('\n",
            "not a valid regular expression",
        ),
        (
            "[[privacy.matchers]]\nname = 'x'\nclass = 'red'\nmatch = 'email'\n",
            "does not match on key",
        ),
        (
            "[[privacy.matchers]]\nname = 'x'\nclass = 'purple'\n",
            "expected one of: green, red, yellow",
        ),
        ("[privacy.destinations.nowhere]\nred = 'block'\n", "no destination is named 'nowhere'"),
        ("[privacy.sources.nowhere]\nblock = ['red']\n", "no source is named 'nowhere'"),
        ("[privacy.warehouses.nowhere]\nred = 'hash'\n", "no warehouse is named 'nowhere'"),
        ("[privacy.destinations.x]\nred = 'encrypt'\n", "expected one of: allow, block, hash"),
    ],
)
def test_config_errors_say_what_is_wrong(toml: str, problem: str) -> None:
    with pytest.raises(cdpd_config.ConfigError, match=problem):
        cdpd_config.parse(toml)


def test_defaults() -> None:
    assert PrivacyConfig().detect is True
