"""Mixpanel's action kinds and presets, with the default mappings of Segment's Mixpanel
(Actions) destination (trackEvent, trackPurchase, identifyUser, groupIdentifyUser, alias)."""

from __future__ import annotations

from typing import Any

from cdpd.destinations.actions import ActionKind, Field, Preset


def _path(path: str) -> dict[str, str]:
    return {"@path": path}


def _either(first: str, second: str) -> dict[str, Any]:
    return {"@if": {"exists": _path(first), "then": _path(first), "else": _path(second)}}


USER_OR_ANONYMOUS = _either("$.userId", "$.anonymousId")

# Segment's eventProperties: each becomes a Mixpanel property (see mixpanel.event_properties).
_EVENT_FIELDS: dict[str, Field] = {
    "event": Field("the event name", _path("$.event"), required=True),
    "distinct_id": Field("the Mixpanel distinct_id: userId, else anonymousId", USER_OR_ANONYMOUS),
    "anonymous_id": Field("$anon_id", _path("$.anonymousId")),
    "user_id": Field("$user_id and $identified_id", _path("$.userId")),
    "group_id": Field("$group_id", _path("$.context.groupId")),
    "insert_id": Field(
        "$insert_id, Mixpanel's deduplication key (one that is not 1-36 letters, digits or "
        "dashes is replaced by a UUID derived from it)",
        _path("$.messageId"),
    ),
    "time": Field("the event's time (sent as epoch milliseconds)", _path("$.timestamp")),
    "ip": Field("ip, for geolocation", _path("$.context.ip")),
    "url": Field("$current_url", _path("$.context.page.url")),
    "referrer": Field("$referrer", _path("$.context.page.referrer")),
    "user_agent": Field("parsed into $browser and $browser_version", _path("$.context.userAgent")),
    "library_name": Field("mp_lib (prefixed `cdpd: `)", _path("$.context.library.name")),
    "library_version": Field("$lib_version", _path("$.context.library.version")),
    "language": Field("$locale", _path("$.context.locale")),
    "app_name": Field("$app_name", _path("$.context.app.name")),
    "app_namespace": Field("$app_namespace", _path("$.context.app.namespace")),
    "app_build": Field("$app_build_number", _path("$.context.app.build")),
    "app_version": Field("$app_version_string", _path("$.context.app.version")),
    "os_name": Field("$os", _path("$.context.os.name")),
    "os_version": Field("$os_version", _path("$.context.os.version")),
    "device_id": Field("$device_id", _path("$.context.device.id")),
    "device_type": Field("$device_type", _path("$.context.device.type")),
    "device_name": Field("$device and $device_name", _path("$.context.device.name")),
    "device_manufacturer": Field("$manufacturer", _path("$.context.device.manufacturer")),
    "device_model": Field("$model", _path("$.context.device.model")),
    "idfa": Field("$ios_ifa", _either("$.context.device.advertisingId", "$.context.device.idfa")),
    "bluetooth": Field("$bluetooth_enabled", _path("$.context.network.bluetooth")),
    "cellular": Field("$cellular_enabled", _path("$.context.network.cellular")),
    "wifi": Field("$wifi_enabled", _path("$.context.network.wifi")),
    "carrier": Field("$carrier", _path("$.context.network.carrier")),
    "country": Field("mp_country_code", _path("$.context.location.country")),
    "screen_width": Field("$screen_width", _path("$.context.screen.width")),
    "screen_height": Field("$screen_height", _path("$.context.screen.height")),
    "screen_density": Field("$screen_density", _path("$.context.screen.density")),
    "utm_properties": Field(
        "utm_source, utm_medium, utm_campaign, utm_term, utm_content",
        {
            "utm_source": _path("$.context.campaign.source"),
            "utm_medium": _path("$.context.campaign.medium"),
            "utm_campaign": _path("$.context.campaign.name"),
            "utm_term": _path("$.context.campaign.term"),
            "utm_content": _path("$.context.campaign.content"),
        },
    ),
    "event_properties": Field(
        "the event's own properties (Mixpanel's reserved ones among them are left out)",
        _path("$.properties"),
    ),
}

_PRODUCT = {
    key: _path(key)
    for key in (
        "product_id", "sku", "category", "name", "brand", "variant", "price", "quantity",
        "coupon", "position", "url", "image_url",
    )
}  # fmt: skip

KINDS = {
    "track": ActionKind("track", "Track Event: one event to /import", dict(_EVENT_FIELDS)),
    "purchase": ActionKind(
        "purchase",
        "Track Purchase: the order event to /import, and a `Product Purchased` event per product",
        {
            **_EVENT_FIELDS,
            "products": Field(
                "the products of the order",
                {"@arrayPath": ["$.properties.products", _PRODUCT]},
            ),
            "purchase_event_per_product": Field(
                "also send `Product Purchased` for each product", True
            ),
        },
    ),
    "identify": ActionKind(
        "identify",
        "Identify User: `$identify` to /track when both ids are known (linking the anonymous "
        "id), and the traits as a profile `$set` to /engage",
        {
            "ip": Field("$ip of the profile update", _path("$.context.ip")),
            "user_id": Field("the profile's $distinct_id", _path("$.userId")),
            "anonymous_id": Field("$anon_id of `$identify`", _path("$.anonymousId")),
            "traits": Field("the profile properties to $set", _path("$.traits")),
        },
    ),
    "group": ActionKind(
        "group",
        "Group Identify User: the traits as a group profile `$set` to /groups",
        {
            "group_key": Field("the group key set up in Mixpanel (none: `$group_id`)"),
            "group_id": Field(
                "the group id (a trait named as the group key wins)",
                _path("$.groupId"),
                required=True,
            ),
            "traits": Field("the group properties to $set", _path("$.traits")),
        },
    ),
    "alias": ActionKind(
        "alias",
        "Alias: `$create_alias` to /track (for projects on Mixpanel's legacy identity management)",
        {
            "alias": Field("the new id", USER_OR_ANONYMOUS, required=True),
            "distinct_id": Field("the id it joins", _path("$.previousId"), required=True),
        },
    ),
}

VIEWED = {"event": {"@template": "Viewed {{name}}"}}
PRESETS = (
    Preset("Track Calls", "track", 'type = "track" and event != "Order Completed"'),
    Preset("Order Completed Calls", "purchase", 'type = "track" and event = "Order Completed"'),
    Preset("Page Calls", "track", 'type = "page"', VIEWED),
    Preset("Screen Calls", "track", 'type = "screen"', VIEWED),
    Preset("Identify Calls", "identify", 'type = "identify"'),
    Preset("Group Calls", "group", 'type = "group"'),
)
