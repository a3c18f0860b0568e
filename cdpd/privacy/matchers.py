"""Matchers: which class a field suggests, from its name (key) or from a value. Pure.

Key matching follows Segment's Privacy Portal: a key is split into lowercase words
(`billingAddress`, `billing_address` -> `billing address`); `exact` means the words equal the
matcher's name or a synonym; `similar` means a Sørensen-Dice score over 0.7 (the bigram
formula of `imjasonmiller/godice`, which Segment uses) between them, or between the name and
a run of as many of the key's words (so `shipping_city` resembles `city`). The strongest class
among the matchers that match wins (red over yellow over green).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cdpd.privacy.settings import MatcherConfig, PrivacyConfig

SIMILARITY_THRESHOLD = 0.7
RANK = {"green": 1, "yellow": 2, "red": 3}

# Segment's default matchers (they match on keys; `sd:privacy/portal.md`).
DEFAULT_KEY_TERMS = {
    "red": (
        "social security number",
        "password",
        "visa",
        "veteran",
        "disability",
        "credit card",
        "passport",
        "token",
    ),
    "yellow": (
        "race",
        "birthdate",
        "phone",
        "address",
        "gender",
        "ethnicity",
        "citizenship",
        "name",
        "street",
        "city",
        "zipcode",
        "email",
        "certificate",
        "license",
        "identification",
        "serial",
        "ip",
        "photo",
        "salary",
        "religion",
        "mac",
        "sex",
        "sexual orientation",
        "medication",
        "allergy",
        "condition",
        "diagnosis",
        "procedure",
    ),
}
# cdpd's default value detectors, named so that a custom matcher of the name replaces them.
DEFAULT_VALUE_DETECTORS = (
    ("email", "yellow", "email"),
    ("phone", "yellow", "phone"),
    ("ip", "yellow", "ip_address"),
    ("credit card", "red", "card_number"),
    ("social security number", "red", "national_id"),
)
# Fields of Segment's spec that name software, not people (`context.library.name`...).
NOT_PERSONAL = frozenset(
    {
        "context.library.name",
        "context.library.version",
        "context.app.name",
        "context.app.version",
        "context.app.build",
        "context.app.namespace",
        "context.os.name",
        "context.os.version",
        "context.device.manufacturer",
        "context.device.model",
        "context.device.type",
        "context.network.carrier",
        "context.campaign.name",
        "context.page.title",
        "context.screen.density",
    }
)

_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
_PHONE_INTERNATIONAL = re.compile(r"\+[1-9][\d\s().-]{6,20}")
_PHONE_NANP = re.compile(r"\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}")
_CARD = re.compile(r"\d(?:[ -]?\d){12,18}")
_NATIONAL_IDS = (
    re.compile(r"(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}"),  # US social security
    re.compile(r"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]"),  # UK NINO
)


def words(key: str) -> str:
    """`creditCardNumber`, `credit_card_number`, `Credit-Card number` -> `credit card number`."""
    return " ".join(word.lower() for word in _WORD.findall(key))


def dice(first: str, second: str) -> float:
    """Sørensen-Dice over character bigrams, spaces removed (godice's CompareString)."""
    a, b = first.replace(" ", ""), second.replace(" ", "")
    if a == b:
        return 1.0
    if len(a) < 2 or len(b) < 2:
        return 0.0
    bigrams = Counter(a[i : i + 2] for i in range(len(a) - 1))
    shared = 0
    for i in range(len(b) - 1):
        pair = b[i : i + 2]
        if bigrams[pair] > 0:
            bigrams[pair] -= 1
            shared += 1
    return 2.0 * shared / (len(a) + len(b) - 2)


def similar(key_words: str, term: str) -> bool:
    if dice(key_words, term) > SIMILARITY_THRESHOLD:
        return True
    parts, size = key_words.split(), term.count(" ") + 1
    if len(parts) <= size:
        return False
    return any(
        dice(" ".join(parts[i : i + size]), term) > SIMILARITY_THRESHOLD
        for i in range(len(parts) - size + 1)
    )


def luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        n = int(char)
        if index % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def is_card_number(text: str) -> bool:
    if not _CARD.fullmatch(text):
        return False
    digits = text.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn(digits)


def is_ip_address(text: str) -> bool:
    if len(text) > 45 or ("." not in text and ":" not in text):
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_phone(text: str) -> bool:
    if _PHONE_NANP.fullmatch(text):
        return True
    if not _PHONE_INTERNATIONAL.fullmatch(text):
        return False
    return 7 <= sum(char.isdigit() for char in text) <= 15


DETECTORS: dict[str, Callable[[str], object]] = {
    "email": _EMAIL.fullmatch,
    "phone": is_phone,
    "card_number": is_card_number,
    "ip_address": is_ip_address,
    "national_id": lambda text: any(p.fullmatch(text) for p in _NATIONAL_IDS),
}


def compile_pattern(pattern: str) -> tuple[re.Pattern[str] | None, str | None]:
    try:
        return re.compile(pattern), None
    except re.error as exc:
        return None, f"not a valid regular expression: {exc}"


@dataclass(frozen=True)
class Suggestion:
    class_: str
    matcher: str
    on: str  # "key" or "value"


@dataclass(frozen=True)
class _Matcher:
    name: str
    class_: str
    on: str
    match: str
    terms: tuple[str, ...]  # name and synonyms, as words
    pattern: re.Pattern[str] | None

    def matches_key(self, key: str, key_words: str) -> bool:
        if self.match == "regex":
            assert self.pattern is not None
            return self.pattern.search(key) is not None
        if self.match == "exact":
            return key_words in self.terms
        return any(similar(key_words, term) for term in self.terms)

    def matches_value(self, text: str) -> bool:
        if self.pattern is not None:
            return self.pattern.search(text) is not None
        return bool(DETECTORS[self.match](text))


def _custom(config: MatcherConfig) -> _Matcher:
    pattern = compile_pattern(config.pattern)[0] if config.pattern is not None else None
    terms = tuple(dict.fromkeys(words(t) or t.lower() for t in (config.name, *config.synonyms)))
    return _Matcher(config.name, config.class_, config.on, config.match, terms, pattern)


# Names the defaults also go by (Segment's defaults have none; these are common spellings).
DEFAULT_SYNONYMS = {
    "social security number": ("ssn",),
    "birthdate": ("dob", "date of birth", "birthday"),
    "phone": ("mobile", "telephone"),
    "zipcode": ("zip", "postal code", "postcode"),
}


def _defaults() -> list[_Matcher]:
    found = [
        _Matcher(term, class_, "key", "similar", (term, *DEFAULT_SYNONYMS.get(term, ())), None)
        for class_, terms in DEFAULT_KEY_TERMS.items()
        for term in terms
    ]
    found += [
        _Matcher(name, class_, "value", kind, (), None)
        for name, class_, kind in DEFAULT_VALUE_DETECTORS
    ]
    return found


class Matchers:
    """The matchers in force: the defaults (unless replaced by name or turned off) and the
    custom ones. Key suggestions are remembered per key, so each name is matched once."""

    def __init__(self, config: PrivacyConfig) -> None:
        custom = [_custom(m) for m in config.matchers]
        replaced = {m.name.lower() for m in custom}
        defaults = _defaults() if config.default_matchers else []
        chosen = [m for m in defaults if m.name not in replaced] + custom
        self._on_key = tuple(m for m in chosen if m.on == "key")
        self._on_value = tuple(m for m in chosen if m.on == "value")
        self.for_key: Callable[[str], Suggestion | None] = functools.lru_cache(maxsize=65536)(
            self._for_key
        )

    def _for_key(self, key: str) -> Suggestion | None:
        key_words = words(key) or key.lower()
        return _strongest(
            Suggestion(m.class_, m.name, "key")
            for m in self._on_key
            if m.matches_key(key, key_words)
        )

    def for_value(self, value: Any) -> Suggestion | None:
        if type(value) is int:
            value = str(value)
        if type(value) is not str or not value or len(value) > 256:
            return None
        text = value.strip()
        return _strongest(
            Suggestion(m.class_, m.name, "value") for m in self._on_value if m.matches_value(text)
        )

    def for_field(self, path: str, key_path: list[str], value: Any) -> Suggestion | None:
        """The strongest of: the field's key, its parents' keys (`number` under
        `credit_card`), its value."""
        found = (
            [self.for_key(key) for key in reversed(key_path)] if path not in NOT_PERSONAL else []
        )
        found.append(self.for_value(value))  # last: on a tie, the key's name says more
        return _strongest(s for s in found if s is not None)


def _strongest(suggestions: Any) -> Suggestion | None:
    best: Suggestion | None = None
    for suggestion in suggestions:
        if best is None or RANK[suggestion.class_] > RANK[best.class_]:
            best = suggestion
    return best


def mask(value: Any) -> str | None:
    """A sample that shows a value's shape, not the value: letters and digits become `*` but
    for the first and last character of a longer text; punctuation stays (`j***@*******.**m`)."""
    if value is None or type(value) is bool:
        return None if value is None else str(value).lower()
    if isinstance(value, (dict, list)):
        return None
    text = str(value)[:64]
    if len(text) <= 4:
        return "".join("*" if c.isalnum() else c for c in text)
    middle = "".join("*" if c.isalnum() else c for c in text[1:-1])
    return text[0] + middle + text[-1]
