"""GA4 Measurement Protocol's rules for names and values, and how cdpd makes an event keep them.
Pure functions.

The collection endpoint answers 2xx to anything and silently drops what breaks these rules, so
cdpd checks before sending. What can be made valid is (Segment's GA4 destination does the same
for event names, cdpd extends it to parameters):

- event and parameter names: every run of characters other than letters, digits and `_`
  becomes one `_`, and `_` at either end goes (`Order Completed` -> `Order_Completed`, then
  `order_completed` when lowercasing); event names are lowercased unless told otherwise;
- nested objects become flat parameters (`address.city` -> `address_city`); nulls are left
  out; booleans become `"true"`/`"false"`;
- a text value longer than its limit (100 characters, `page_location` 1,000, `page_referrer`
  420, `page_title` 300; user property values 36) is cut to it, as GA4 would not keep it.

What cannot is refused, with the reason: a name that does not start with a letter, is longer
than 40 characters (24 for user properties), is reserved or starts with `ga_`, `google_` or
`firebase_`; more than 25 parameters or user properties; a list anywhere but `items`; an item
with neither `item_id` nor `item_name`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

MAX_EVENTS_PER_REQUEST = 25
MAX_BODY_BYTES = 130_000
MAX_PARAMS = 25
MAX_USER_PROPERTIES = 25
MAX_NAME_CHARS = 40
MAX_USER_PROPERTY_NAME_CHARS = 24
MAX_USER_PROPERTY_VALUE_CHARS = 36
MAX_VALUE_CHARS = 100
LONGER_VALUES = {"page_location": 1000, "page_referrer": 420, "page_title": 300}
RESERVED_PREFIXES = ("ga_", "google_", "firebase_")
RESERVED_EVENTS = frozenset(
    {
        "ad_activeview", "ad_click", "ad_exposure", "ad_impression", "ad_query", "ad_reward",
        "adunit_exposure", "app_background", "app_clear_data", "app_exception", "app_install",
        "app_remove", "app_store_refund", "app_update", "app_upgrade", "dynamic_link_app_open",
        "dynamic_link_app_update", "dynamic_link_first_open", "error", "firebase_campaign",
        "firebase_in_app_message_action", "firebase_in_app_message_dismiss",
        "firebase_in_app_message_impression", "first_open", "first_visit", "in_app_purchase",
        "notification_dismiss", "notification_foreground", "notification_open",
        "notification_receive", "notification_send", "os_update", "screen_view",
        "session_start", "user_engagement",
    }
)  # fmt: skip
RESERVED_USER_PROPERTIES = frozenset(
    {
        "first_open_time", "first_visit_time", "last_deep_link_referrer", "user_id",
        "first_open_after_install",
    }
)  # fmt: skip
_VALID_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_]+")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class Invalid(Exception):
    """An event GA4 would drop and cdpd cannot mend; the message says why."""


# GA4 takes events backdated up to 72 hours (Measurement Protocol); older ones it answers 2xx
# and silently drops.
MAX_BACKDATING_MS = 72 * 3600 * 1000


def backdated_too_far(timestamp_ms: int, now_ms: int) -> bool:
    """Whether GA4 would drop an event with this time (it answers 2xx and loses it)."""
    return now_ms - timestamp_ms > MAX_BACKDATING_MS


def snake(name: str, *, lowercase: bool) -> str:
    """A name with only letters, digits and `_`, as GA4 takes them."""
    mended = _NOT_NAME.sub("_", name.strip()).strip("_")
    return mended.lower() if lowercase else mended


def check_name(name: str, what: str, max_chars: int = MAX_NAME_CHARS) -> None:
    if not name:
        raise Invalid(f"the {what} is empty")
    if not _VALID_NAME.match(name):
        raise Invalid(f"the {what} {name!r} does not start with a letter")
    if len(name) > max_chars:
        raise Invalid(f"the {what} {name!r} is longer than {max_chars} characters")
    if name.lower().startswith(RESERVED_PREFIXES):
        raise Invalid(
            f"the {what} {name!r} starts with a reserved prefix (ga_, google_, firebase_)"
        )


def event_name(raw: Any, *, lowercase: bool) -> str:
    """The GA4 name for a custom event's name, or Invalid."""
    if not isinstance(raw, str):
        raise Invalid("the event has no name")
    name = snake(raw, lowercase=lowercase)
    check_name(name, "event name")
    if name in RESERVED_EVENTS:
        raise Invalid(f"the event name {name!r} is reserved by GA4")
    return name


def params(values: dict[str, Any]) -> dict[str, Any]:
    """An event's parameters made valid, or Invalid."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key == "items":
            flat["items"] = items(value)
        else:
            _flatten(str(key), value, flat)
    if len(flat) > MAX_PARAMS:
        raise Invalid(f"the event has {len(flat)} parameters (GA4 keeps at most {MAX_PARAMS})")
    return flat


def items(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise Invalid("items is not a list")
    made = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise Invalid(f"items[{index}] is not an object")
        flat: dict[str, Any] = {}
        for key, inner in item.items():
            _flatten(str(key), inner, flat, where=f"items[{index}].")
        if "item_id" not in flat and "item_name" not in flat:
            raise Invalid(f"items[{index}] has neither item_id nor item_name")
        made.append(flat)
    return made


def user_properties(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`{"name": {"value": v}}` for GA4, or Invalid."""
    made: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if value is None:
            continue
        name = snake(str(key), lowercase=False)
        check_name(name, "user property", MAX_USER_PROPERTY_NAME_CHARS)
        if name in RESERVED_USER_PROPERTIES:
            raise Invalid(f"the user property {name!r} is reserved by GA4")
        if isinstance(value, dict | list):
            raise Invalid(f"the user property {name!r} is not a text or a number")
        made[name] = {"value": _scalar(value, MAX_USER_PROPERTY_VALUE_CHARS)}
    if len(made) > MAX_USER_PROPERTIES:
        raise Invalid(f"{len(made)} user properties (GA4 keeps at most {MAX_USER_PROPERTIES})")
    return made


def currency(value: Any) -> str:
    if not isinstance(value, str) or not _CURRENCY.match(value.upper()):
        raise Invalid(f"the currency {value!r} is not a 3-letter ISO 4217 code")
    return value.upper()


def body_bytes(body: dict[str, Any]) -> int:
    return len(msgspec.json.encode(body))


def _flatten(key: str, value: Any, into: dict[str, Any], where: str = "") -> None:
    if value is None:
        return
    if isinstance(value, dict):
        for inner_key, inner in value.items():
            _flatten(f"{key}_{inner_key}", inner, into, where)
        return
    name = snake(key, lowercase=False)
    check_name(name, f"parameter name in {where.rstrip('.')}" if where else "parameter name")
    if isinstance(value, list):
        raise Invalid(f"the parameter {where}{name!r} is a list (GA4 takes a list only as items)")
    into[name] = _scalar(value, LONGER_VALUES.get(name, MAX_VALUE_CHARS))


def _scalar(value: Any, max_chars: int) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    text = str(value)
    return text[:max_chars]
