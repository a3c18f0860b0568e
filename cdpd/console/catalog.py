"""The destination catalog as forms: each type's settings form is generated from the catalog's
own description (`cdpd destinations`), a submitted form is checked as `cdpd check-config`
checks a file, and a valid one becomes a TOML fragment for the `conf.d/` directory.

Applying a fragment belongs to the live reload (SIGHUP); `write_fragment` only writes the
file, atomically, for that reload to pick up.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from cdpd.confd import write_atomically
from cdpd.config import Config, ConfigError, Destination
from cdpd.destinations import describe, registry

SECRET_NAME = re.compile(r"(secret|password|token|api_key|apikey|webhook_url|dsn)$", re.I)
MASK = "••••••"


@dataclass(frozen=True)
class FormField:
    name: str
    kind: str  # text, password, number, checkbox, select, json
    type_name: str
    required: bool
    default: Any
    choices: list[str]


def is_secret(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and not name.endswith("_env")


@functools.cache
def types() -> list[describe.TypeInfo]:
    """The catalog (fixed for the life of the process)."""
    return describe.describe()


@functools.cache
def form(type_name: str) -> list[FormField]:
    """The form fields of a destination type, from its catalog description."""
    info = next((t for t in types() if t.type == type_name), None)
    if info is None:
        raise KeyError(type_name)
    fields = []
    for setting in info.settings:
        if setting.name in ("name", "type"):
            continue
        fields.append(_field(setting))
    return fields


def _field(setting: describe.SettingInfo) -> FormField:
    kind_name = setting.type
    choices: list[str] = []
    if kind_name == "boolean":
        kind = "checkbox"
    elif kind_name.startswith(("integer", "number")):
        kind = "number"
    elif kind_name.startswith("'"):
        kind, choices = "select", [c.strip().strip("'") for c in kind_name.split("|")]
    elif kind_name.startswith(("string", "none | string", "string | none")):
        kind = "password" if is_secret(setting.name) else "text"
    else:
        kind = "json"
    default = setting.default
    if kind == "json" and default is not None:
        default = json.dumps(default)
    return FormField(setting.name, kind, kind_name, setting.required, default, choices)


def read_form(type_name: str, name: str, submitted: dict[str, str]) -> dict[str, Any]:
    """The settings a submitted form gives (empty fields are left to their defaults);
    ConfigError names the field that is not of its type."""
    settings: dict[str, Any] = {"name": name, "type": type_name}
    for field in form(type_name):
        raw = submitted.get(field.name, "")
        if field.kind == "checkbox":
            if (raw == "on") != bool(field.default):
                settings[field.name] = raw == "on"
            continue
        if raw.strip() == "":
            continue
        settings[field.name] = _value(field, raw)
    return settings


def _value(field: FormField, raw: str) -> Any:
    try:
        if field.kind == "number":
            return int(raw) if field.type_name.startswith("integer") else float(raw)
        if field.kind == "json":
            return json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{field.name}: expected {field.type_name}: {exc}") from None
    return raw


def check(config: Config, settings: dict[str, Any]) -> Destination:
    """Validate a new destination as check-config would: its settings, its actions, and a
    name no other destination has."""
    if any(d.name == settings["name"] for d in config.destinations):
        raise ConfigError(f"name: a destination named {settings['name']!r} exists already")
    try:
        destination: Destination = msgspec.convert(settings, type=Destination)
    except msgspec.ValidationError as exc:
        raise ConfigError(explain(str(exc))) from None
    registry.build(destination)
    registry.actions_of(destination)
    return destination


def explain(message: str) -> str:
    text, sep, where = message.rpartition(" - at `$")
    return f"{where.rstrip('`').lstrip('.')}: {text}" if sep else message


def fragment(settings: dict[str, Any], section: str = "destinations") -> str:
    """The TOML for one destination (JSON's strings, numbers and booleans are TOML's too)."""
    lines = [f"[[{section}]]"]
    for key, value in settings.items():
        lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def write_fragment(conf_dir: Path, name: str, text: str, kind: str = "destination") -> Path:
    """Write `<conf_dir>/<kind>-<name>.toml` atomically (a reload never sees half)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise ConfigError(f"name: {name!r} cannot name a file")
    target = conf_dir / f"{kind}-{name}.toml"
    write_atomically(target, text)
    return target


def masked(destination: Destination) -> list[tuple[str, str]]:
    """A destination's settings as shown: secrets masked."""
    shown = []
    for key, value in msgspec.to_builtins(destination).items():
        if isinstance(value, dict) and key == "headers":
            value = {
                k: (MASK if is_secret(k) or k.lower() == "authorization" else v)
                for k, v in value.items()
            }
        elif is_secret(key) and value:
            value = MASK
        shown.append((key, value if isinstance(value, str) else json.dumps(value)))
    return shown
