"""`cdpd destinations`: the catalog as a person reads it, from the same definitions delivery
uses (settings from the config Structs, action kinds with their default mappings, presets)."""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect

from cdpd.destinations.actions import Field, Preset
from cdpd.destinations.registry import DestinationType, catalog
from cdpd.destinations.settings import _Destination


def _fields(settings: type[Any]) -> dict[str, msgspec.inspect.Field]:
    info = msgspec.inspect.type_info(settings)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.name: f for f in info.fields}


# What every destination takes; a type lists one of these too when it sets its own default
# or limits (Mixpanel's batch_size, say).
_COMMON = _fields(_Destination)


class SettingInfo(msgspec.Struct):
    name: str
    type: str
    default: Any
    required: bool


class KindInfo(msgspec.Struct):
    name: str
    description: str
    fields: dict[str, Any]  # field -> {"description", "default", "required"}


class TypeInfo(msgspec.Struct):
    type: str
    catalog_name: str
    description: str
    settings: list[SettingInfo]
    actions: list[KindInfo]
    presets: list[dict[str, Any]]


def describe() -> list[TypeInfo]:
    return [_describe(kind) for kind in catalog()]


def text() -> str:
    lines: list[str] = []
    for info in describe():
        lines += [f"{info.type}  ({info.catalog_name})", f"  {info.description}", "  settings:"]
        lines += [
            f"    {s.name} ({s.type})" + (" required" if s.required else f" = {s.default!r}")
            for s in info.settings
        ]
        lines.append("  actions:")
        for kind in info.actions:
            lines.append(f"    {kind.name}: {kind.description}")
            for name, field in kind.fields.items():
                default = (
                    msgspec.json.encode(field["default"]).decode()
                    if field["default"] is not None
                    else "-"
                )
                marker = " (required)" if field["required"] else ""
                lines.append(f"      {name}{marker}: {field['description']}; default {default}")
        lines.append("  presets (used when no actions are configured):")
        for p in info.presets:
            lines.append(f"    {p['name']} [{p['kind']}]: {p['subscribe']}")
            if "mapping" in p:
                lines.append(f"      mapping {msgspec.json.encode(p['mapping']).decode()}")
        lines.append(
            "  every destination also takes: " + ", ".join(sorted(set(_COMMON) - {"name"}))
        )
        lines.append("")
    return "\n".join(lines)


def _describe(kind: DestinationType) -> TypeInfo:
    settings = [
        SettingInfo(f.name, _type_name(f.type), _default(f), f.required)
        for f in _fields(kind.settings).values()
        if f.name not in _COMMON or _own(f, _COMMON[f.name])
    ]
    return TypeInfo(
        type=kind.name,
        catalog_name=kind.catalog_name,
        description=kind.description,
        settings=settings,
        actions=[
            KindInfo(
                k.name,
                k.description,
                {
                    name: {
                        "description": f.description,
                        "default": f.default,
                        "required": f.required,
                    }
                    for name, f in k.fields.items()
                },
            )
            for k in kind.kinds.values()
        ],
        presets=[_preset(p) for p in kind.presets],
    )


def _preset(preset: Preset) -> dict[str, Any]:
    described: dict[str, Any] = {
        "name": preset.name,
        "kind": preset.kind,
        "subscribe": preset.subscribe,
    }
    if preset.mapping:
        described["mapping"] = preset.mapping
    return described


def _field(field: Field) -> dict[str, Any]:
    return {"description": field.description, "default": field.default, "required": field.required}


def _own(field: msgspec.inspect.Field, common: msgspec.inspect.Field) -> bool:
    """A common setting the type gives a default or limits of its own."""
    return _default(field) != _default(common) or field.type != common.type


def _default(field: msgspec.inspect.Field) -> Any:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return None


def _type_name(kind: msgspec.inspect.Type) -> str:
    name = type(kind).__name__.removesuffix("Type").lower()
    if isinstance(kind, msgspec.inspect.UnionType):
        return " | ".join(_type_name(t) for t in kind.types)
    if isinstance(kind, msgspec.inspect.LiteralType):
        return " | ".join(repr(v) for v in kind.values)
    name = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(name, name)
    if isinstance(kind, msgspec.inspect.IntType | msgspec.inspect.FloatType):
        bounds = [
            f"{sign} {value}"
            for sign, value in ((">=", kind.ge), (">", kind.gt), ("<=", kind.le), ("<", kind.lt))
            if value is not None
        ]
        return f"{name} {', '.join(bounds)}" if bounds else name
    return name
