"""Tracking plans the governance tests share, in Segment's rule format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from tests.helpers import WRITE_KEY

ORDER_COMPLETED = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {
        "context": {},
        "traits": {},
        "properties": {
            "type": "object",
            "properties": {
                "order_id": {"type": "string"},
                "revenue": {"type": "number"},
                "currency": {"enum": ["EUR", "USD"]},
                "coupon": {"type": ["string", "null"], "pattern": "^[A-Z]+$"},
            },
            "required": ["order_id"],
        },
    },
    "required": ["properties"],
}

PLAN: dict[str, Any] = {
    "rules": [
        {"type": "TRACK", "key": "Order Completed", "version": 1, "jsonSchema": ORDER_COMPLETED},
        {
            "type": "TRACK",
            "key": "Order Completed",
            "version": 2,
            "json_schema": {
                "type": "object",
                "properties": {
                    "properties": {
                        "type": "object",
                        "properties": {"order_id": {"type": "integer"}},
                        "required": ["order_id"],
                    }
                },
            },
        },
        {"type": "TRACK", "key": "Signed Up", "version": 1, "jsonSchema": {}},
        {
            "type": "IDENTIFY",
            "version": 1,
            "jsonSchema": {
                "type": "object",
                "properties": {
                    "traits": {
                        "type": "object",
                        "properties": {"email": {"type": "string"}, "age": {"type": "integer"}},
                    }
                },
            },
        },
    ]
}

COMMON_DEVICE = {
    "type": "COMMON",
    "version": 1,
    "jsonSchema": {
        "type": "object",
        "properties": {
            "context": {"type": "object", "required": ["app"]},
        },
    },
}


def write_plan(path: Path, plan: dict[str, Any] = PLAN) -> Path:
    path.write_bytes(msgspec.json.encode(plan))
    return path


def governed_config(data_dir: Path, plan: Path | None, website: str = "", extra: str = "") -> str:
    """A complete config: source "website" (write key tests.helpers.WRITE_KEY) with the plan at
    `plan` and the keys in `website`; source "violations" (write key "wk_violations")."""
    plans = f'[[tracking_plans]]\nname = "main"\npath = "{plan}"\n' if plan else ""
    uses = 'tracking_plan = "main"\n' if plan else ""
    return (
        f'[server]\nlisten = "127.0.0.1:0"\n'
        f'[storage]\ndata_dir = "{data_dir}"\nmin_free_disk_bytes = 0\n'
        f"{plans}{extra}"
        f'[[sources]]\nname = "violations"\nwrite_key = "wk_violations"\n'
        f'[[sources]]\nname = "website"\nwrite_key = "{WRITE_KEY}"\n{uses}{website}'
    )
