"""Segment Spec examples (segment-docs: connections/spec/*.md and ecommerce/v2.md), as a client
library would send them; contract tests post these through a real cdpd."""

from __future__ import annotations

from typing import Any

CONTEXT = {
    "ip": "203.0.113.7",
    "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36",
    "library": {"name": "analytics.js", "version": "next-1.84.1"},
    "page": {"path": "/checkout", "url": "https://shop.example.com/checkout", "title": "Checkout"},
    "locale": "en-US",
}

IDENTIFY: dict[str, Any] = {
    "type": "identify",
    "messageId": "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
    "anonymousId": "507f191e810c19729de860ea",
    "userId": "97980cfea0067",
    "timestamp": "2015-02-23T22:28:55.111Z",
    "traits": {
        "name": "Peter Gibbons",
        "email": "peter@example.com",
        "plan": "premium",
        "logins": 5,
        "address": {"street": "6th St", "city": "San Francisco", "state": "CA"},
        "createdAt": "2015-02-01T00:00:00.000Z",
    },
    "context": CONTEXT,
}

ORDER_COMPLETED: dict[str, Any] = {
    "type": "track",
    "messageId": "4a7f6e2d-0b2c-4b5e-9a8f-1c2d3e4f5a6b",
    "anonymousId": "507f191e810c19729de860ea",
    "userId": "97980cfea0067",
    "event": "Order Completed",
    "timestamp": "2015-02-23T22:29:10.000Z",
    "properties": {
        "checkout_id": "fksdjfsdjfisjf9sdfjsd9f",
        "order_id": "50314b8e9bcf000000000000",
        "affiliation": "Google Store",
        "total": 27.50,
        "subtotal": 22.50,
        "revenue": 25.00,
        "shipping": 3,
        "tax": 2,
        "discount": 2.5,
        "coupon": "hasbros",
        "currency": "USD",
        "products": [
            {
                "product_id": "507f1f77bcf86cd799439011",
                "sku": "45790-32",
                "name": "Monopoly: 3rd Edition",
                "price": 19,
                "quantity": 1,
                "category": "Games",
                "url": "https://www.example.com/product/path",
                "image_url": "https:///www.example.com/product/path.jpg",
            },
            {
                "product_id": "505bd76785ebb509fc183733",
                "sku": "46493-32",
                "name": "Uno Card Game",
                "price": 3,
                "quantity": 2,
                "category": "Games",
            },
        ],
    },
    "context": CONTEXT,
}

PAGE: dict[str, Any] = {
    "type": "page",
    "messageId": "7c4a8d09-ca37-4b8b-9d0e-9b0a1f2e3d4c",
    "anonymousId": "507f191e810c19729de860ea",
    "userId": "97980cfea0067",
    "name": "Home",
    "category": "Docs",
    "timestamp": "2015-02-23T22:28:55.111Z",
    "properties": {
        "title": "Welcome | Initech",
        "url": "https://www.example.com/home",
        "path": "/home",
        "referrer": "https://www.google.com/",
    },
    "context": CONTEXT,
}

SCREEN: dict[str, Any] = {
    "type": "screen",
    "messageId": "9d0e8f7a-6b5c-4d3e-2f1a-0b9c8d7e6f5a",
    "userId": "97980cfea0067",
    "name": "Home",
    "timestamp": "2015-02-23T22:28:55.111Z",
    "properties": {"variation": "blue signup button"},
    "context": {"app": {"name": "InitechGlobal", "version": "545"}, "os": {"name": "iOS"}},
}

GROUP: dict[str, Any] = {
    "type": "group",
    "messageId": "5f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b",
    "anonymousId": "507f191e810c19729de860ea",
    "userId": "97980cfea0067",
    "groupId": "0e8c78ea9d97a7b8185e8632",
    "timestamp": "2015-02-23T22:28:55.111Z",
    "traits": {
        "name": "Initech",
        "industry": "Technology",
        "employees": 329,
        "plan": "enterprise",
        "total billed": 830,
    },
    "context": CONTEXT,
}

ALIAS: dict[str, Any] = {
    "type": "alias",
    "messageId": "3e2d1c0b-9a8f-7e6d-5c4b-3a2f1e0d9c8b",
    "previousId": "507f191e810c19729de860ea",
    "userId": "97980cfea0067",
    "timestamp": "2015-02-23T22:28:55.111Z",
}

ALL = {
    "identify": IDENTIFY,
    "track": ORDER_COMPLETED,
    "page": PAGE,
    "screen": SCREEN,
    "group": GROUP,
    "alias": ALIAS,
}
