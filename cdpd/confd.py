"""`include = "conf.d"`: a directory of TOML fragments merged into the main config file.

Each `*.toml` file in the directory (in name order; a relative directory is taken from the main
file's folder) may hold only lists of entries: `[[sources]]`, `[[destinations]]`,
`[[warehouses]]`, `[[tracking_plans]]`, `[[transformations]]`, `[[workspaces]]`. They are
appended to the main file's lists, so a tool (or a person) can add a destination by writing one
file, and the single-valued sections (`[server]`, `[storage]`, ...) stay in one place. A
`[[workspaces]]` entry naming a workspace defined already adds its sources, destinations and
warehouses to that workspace (the console adds a destination to its workspace this way).
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from cdpd.settings import ConfigError

LIST_SECTIONS = (
    "sources",
    "destinations",
    "warehouses",
    "tracking_plans",
    "transformations",
    "workspaces",
)
WORKSPACE_LISTS = ("sources", "destinations", "warehouses")


Origins = dict[str, list[str | None]]  # per list section, each entry's fragment (None: main)


def merged(text: bytes, path: Path) -> tuple[dict[str, Any], Origins]:
    """The main file's TOML, with its `include` directory's fragments appended, and where each
    entry of the lists came from."""
    document = _toml(text, str(path))
    origins: Origins = {
        key: [None] * len(value) for key, value in document.items() if isinstance(value, list)
    }
    include = document.get("include")
    if include is None:
        return document, origins
    if not isinstance(include, str) or not include:
        raise ConfigError(f'{path}: include: expected a directory name, e.g. "conf.d"')
    folder = path.parent / include
    if not folder.is_dir():
        raise ConfigError(f"{path}: include: {str(folder)!r} is not a directory")
    for fragment_path in sorted(folder.glob("*.toml")):
        fragment = _toml(_read(fragment_path), str(fragment_path))
        for key, value in fragment.items():
            if key not in LIST_SECTIONS or not isinstance(value, list):
                raise ConfigError(
                    f"{fragment_path}: {key}: an included file may only add entries to "
                    + ", ".join(f"[[{name}]]" for name in LIST_SECTIONS)
                )
            shown = f"{include.rstrip('/')}/{fragment_path.name}"
            if key == "workspaces":
                value = _join_workspaces(document.setdefault(key, []), value)
            document.setdefault(key, []).extend(value)
            origins.setdefault(key, []).extend([shown] * len(value))
    return document, origins


def _join_workspaces(known: list[Any], added: list[Any]) -> list[Any]:
    """Adds the lists of each added entry that names a known workspace to it; returns the
    entries that name new workspaces."""
    by_name = {w.get("name"): w for w in known if isinstance(w, dict)}
    new = []
    for entry in added:
        target = by_name.get(entry.get("name")) if isinstance(entry, dict) else None
        if target is None:
            new.append(entry)
            continue
        for section in WORKSPACE_LISTS:
            extra = entry.get(section, [])
            if isinstance(extra, list) and isinstance(target.get(section, []), list):
                target[section] = [*target.get(section, []), *extra]
    return new


_ENTRY = re.compile(r"\b(" + "|".join(LIST_SECTIONS) + r")\[(\d+)\]")


def name_fragments(message: str, origins: Origins) -> str:
    """An error message with each entry that came from a fragment followed by the fragment's
    name: `destinations[3] (conf.d/20-hooks.toml).url: ...`."""

    def named(match: re.Match[str]) -> str:
        entries = origins.get(match.group(1), [])
        index = int(match.group(2))
        source = entries[index] if index < len(entries) else None
        return f"{match.group(0)} (in {source})" if source else match.group(0)

    return _ENTRY.sub(named, message)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc


def _toml(text: bytes, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from exc


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` whole: a reload never reads half a file (the
    temporary file does not end in `.toml`, so no reload reads it either)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
