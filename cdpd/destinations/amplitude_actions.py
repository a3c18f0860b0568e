"""Amplitude's action kinds and presets, with the default mappings of Segment's Amplitude
(Actions) destination (logEventV2, logPurchase, identifyUser)."""

from __future__ import annotations

from typing import Any

from cdpd.destinations.actions import ActionKind, Field, Preset


def _path(path: str) -> dict[str, str]:
    return {"@path": path}


def _either(first: str, second: str) -> dict[str, Any]:
    return {"@if": {"exists": _path(first), "then": _path(first), "else": _path(second)}}


DEVICE_ID = _either("$.context.device.id", "$.anonymousId")
ADVERTISING_ID = _either("$.context.device.advertisingId", "$.context.device.idfa")

# The user and device fields that an event and an identification share (Segment's eventSchema).
_USER_FIELDS: dict[str, Field] = {
    "user_id": Field("user_id (at least min_id_length characters)", _path("$.userId")),
    "device_id": Field("device_id: context.device.id, else anonymousId", DEVICE_ID),
    "user_properties": Field("user_properties", _path("$.traits")),
    "groups": Field("groups (Amplitude Accounts)"),
    "app_version": Field("app_version", _path("$.context.app.version")),
    "platform": Field(
        "platform (`Web` for analytics.js when there is none; iOS and Android capitalised)",
        _path("$.context.device.type"),
    ),
    "os_name": Field("os_name", _path("$.context.os.name")),
    "os_version": Field("os_version", _path("$.context.os.version")),
    "device_brand": Field("device_brand", _path("$.context.device.brand")),
    "device_manufacturer": Field("device_manufacturer", _path("$.context.device.manufacturer")),
    "device_model": Field("device_model", _path("$.context.device.model")),
    "carrier": Field("carrier", _path("$.context.network.carrier")),
    "country": Field("country", _path("$.context.location.country")),
    "region": Field("region", _path("$.context.location.region")),
    "city": Field("city", _path("$.context.location.city")),
    "dma": Field("dma"),
    "language": Field("language", _path("$.context.locale")),
}

_EVENT_FIELDS: dict[str, Field] = {
    "user_id": _USER_FIELDS["user_id"],
    "device_id": _USER_FIELDS["device_id"],
    "event_type": Field("event_type", _path("$.event"), required=True),
    "session_id": Field(
        "session_id (sent as epoch milliseconds)",
        _path("$.integrations.Actions Amplitude.session_id"),
    ),
    "time": Field("time (sent as epoch milliseconds)", _path("$.timestamp")),
    "event_properties": Field("event_properties", _path("$.properties")),
    **{k: v for k, v in _USER_FIELDS.items() if k not in ("user_id", "device_id")},
    "location_lat": Field("location_lat", _path("$.context.location.latitude")),
    "location_lng": Field("location_lng", _path("$.context.location.longitude")),
    "ip": Field("ip", _path("$.context.ip")),
    "idfa": Field("idfa", ADVERTISING_ID),
    "idfv": Field("idfv", _path("$.context.device.id")),
    "adid": Field("adid", ADVERTISING_ID),
    "android_id": Field("android_id"),
    "event_id": Field("event_id"),
    "insert_id": Field("insert_id, Amplitude's deduplication key (7 days)", _path("$.messageId")),
    "library": Field("library", _path("$.context.library.name")),
    "set_once": Field(
        "user_properties.$setOnce",
        {
            "initial_referrer": _path("$.context.page.referrer"),
            "initial_utm_source": _path("$.context.campaign.source"),
            "initial_utm_medium": _path("$.context.campaign.medium"),
            "initial_utm_campaign": _path("$.context.campaign.name"),
            "initial_utm_term": _path("$.context.campaign.term"),
            "initial_utm_content": _path("$.context.campaign.content"),
        },
    ),
    "set_always": Field(
        "user_properties.$set",
        {
            "referrer": _path("$.context.page.referrer"),
            "utm_source": _path("$.context.campaign.source"),
            "utm_medium": _path("$.context.campaign.medium"),
            "utm_campaign": _path("$.context.campaign.name"),
            "utm_term": _path("$.context.campaign.term"),
            "utm_content": _path("$.context.campaign.content"),
        },
    ),
    "add": Field("user_properties.$add"),
}

_REVENUE_FIELDS: dict[str, Field] = {
    "price": Field("price", _path("$.properties.price")),
    "quantity": Field("quantity", _path("$.properties.quantity")),
    "revenue": Field(
        "revenue (price * quantity when both are known)", _path("$.properties.revenue")
    ),
    "productId": Field("productId", _path("$.properties.productId")),
    "revenueType": Field("revenueType (default Purchase)", _path("$.properties.revenueType")),
}

KINDS = {
    "event": ActionKind("event", "Log Event V2: one event to the HTTP V2 API", _EVENT_FIELDS),
    "purchase": ActionKind(
        "purchase",
        "Log Purchase: the order event with its revenue, and a `Product Purchased` event per "
        "product, to the HTTP V2 API",
        {
            **_EVENT_FIELDS,
            **_REVENUE_FIELDS,
            "products": Field(
                "the products",
                {
                    "@arrayPath": [
                        "$.properties.products",
                        {key: _path(key) for key in _REVENUE_FIELDS},
                    ]
                },
            ),
            "revenue_per_product": Field(
                "revenue on each `Product Purchased` event rather than once on the order", False
            ),
        },
    ),
    "identify": ActionKind(
        "identify",
        "Identify User: user properties to the Identify API, without an event",
        {**_USER_FIELDS, "paying": Field("paying"), "start_version": Field("start_version")},
    ),
}

VIEWED = {"event_type": {"@template": "Viewed {{name}}"}}
PRESETS = (
    Preset("Track Calls", "event", 'type = "track" and event != "Order Completed"'),
    Preset("Order Completed Calls", "purchase", 'type = "track" and event = "Order Completed"'),
    Preset("Page Calls", "event", 'type = "page"', VIEWED),
    Preset("Screen Calls", "event", 'type = "screen"', VIEWED),
    Preset("Identify Calls", "identify", 'type = "identify"'),
)
