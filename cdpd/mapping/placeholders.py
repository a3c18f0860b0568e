"""mapping-kit's placeholders (`mapping-kit/placeholders.ts`): how `@template` fills in
`{{path}}` slots."""

from __future__ import annotations

import re
from typing import Any

from cdpd.mapping import js
from cdpd.mapping.js import ABSENT

_TRIPLE = re.compile(r"\{\{\{([^}]+)\}\}\}")
_DOUBLE = re.compile(r"\{\{([^}]+)\}\}")


def render(template: str, data: Any) -> str:
    """mapping-kit's placeholders: `{{path}}` and `{{{path}}}` (the same: nothing is escaped),
    a missing or null value as empty text, any other as JavaScript's String() writes it."""

    def fill(slot: re.Match[str]) -> str:
        value = js.get(data, slot.group(1).strip())
        return "" if value is ABSENT or value is None else js.string(value)

    return _DOUBLE.sub(fill, _TRIPLE.sub(fill, template))
