"""Changes made from the console: a destination added from the catalog, changed, enabled or
disabled; a source added, changed, enabled, disabled or removed.

Each change is one TOML fragment in the main config's `include` directory
(`destination-<name>.toml` or `source-<name>.toml`, holding the entry and the `[[workspaces]]`
entry that puts it in its workspace). A change writes (or removes) its fragment, loads the
whole config again as `cdpd check-config` does and hands it to the live reload
(`Consumers.reload`, SIGHUP's); when either refuses, the fragment is put back as it was and
nothing changed. One change at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

from cdpd.config import Config, ConfigError
from cdpd.console import catalog

log = structlog.get_logger()


class NoConfigFile(Exception):
    """The daemon was started without a config file (or its file has no `include`)."""


class ConfigChanges:
    def __init__(
        self,
        config_path: Path | None,
        load: Callable[[Path], Config],
        reload: Callable[[Config], Any],
    ) -> None:
        self.config_path = config_path
        self._load = load
        self._reload = reload
        self._lock = asyncio.Lock()

    def conf_dir(self) -> Path:
        """The `include` directory of the main config file; NoConfigFile says what is missing."""
        if self.config_path is None:
            raise NoConfigFile(
                "Changes from the console need a config file: this cdpd was started without"
                " one (start it with --config)."
            )
        include = _include_of(self.config_path)
        if not include:
            raise NoConfigFile(
                f'Changes from the console go to a conf.d directory: add include = "conf.d"'
                f" at the top of {self.config_path} and reload."
            )
        return self.config_path.parent / include

    def fragment_of(self, name: str, kind: str = "destination") -> Path | None:
        """The console's fragment holding the destination (or source) `name`, when it is one
        of the console's."""
        try:
            found = self.conf_dir() / f"{kind}-{name}.toml"
        except NoConfigFile:
            return None
        return found if found.is_file() else None

    async def add_destination(self, workspace: str, settings: dict[str, Any]) -> list[str]:
        conf_dir = self.conf_dir()
        text = _text(workspace, settings, "destinations")
        return await self._apply(conf_dir, "destination", settings["name"], text)

    async def replace_destination(self, workspace: str, settings: dict[str, Any]) -> list[str]:
        """New settings for a destination the console added (its `enabled` kept)."""
        return await self._replace(workspace, settings, "destination", keep=("enabled",))

    async def set_enabled(
        self, workspace: str, name: str, enabled: bool, kind: str = "destination"
    ) -> list[str]:
        """Enable or disable a destination (or source) the console added."""
        conf_dir = self.conf_dir()
        settings = dict(_entry(self._own(conf_dir, kind, name), kind))
        settings["enabled"] = enabled
        text = _text(workspace, settings, f"{kind}s")
        return await self._apply(conf_dir, kind, name, text)

    async def add_source(self, workspace: str, settings: dict[str, Any]) -> list[str]:
        conf_dir = self.conf_dir()
        text = _text(workspace, settings, "sources")
        return await self._apply(conf_dir, "source", settings["name"], text)

    async def replace_source(self, workspace: str, settings: dict[str, Any]) -> list[str]:
        """New settings for a source the console added (its write key and `enabled` kept)."""
        return await self._replace(workspace, settings, "source", keep=("write_key", "enabled"))

    async def remove_source(self, name: str) -> list[str]:
        """Take a source the console added out of the config (and its workspace)."""
        conf_dir = self.conf_dir()
        self._own(conf_dir, "source", name)
        return await self._apply(conf_dir, "source", name, None)

    async def _replace(
        self, workspace: str, settings: dict[str, Any], kind: str, keep: tuple[str, ...]
    ) -> list[str]:
        conf_dir = self.conf_dir()
        previous = _entry(self._own(conf_dir, kind, settings["name"]), kind)
        kept = {key: previous[key] for key in keep if key in previous}
        text = _text(workspace, {**settings, **kept}, f"{kind}s")
        return await self._apply(conf_dir, kind, settings["name"], text)

    def _own(self, conf_dir: Path, kind: str, name: str) -> Path:
        path = conf_dir / f"{kind}-{name}.toml"
        if not path.is_file():
            raise ConfigError(
                f"{name} is defined in {self.config_path}, not by the console:"
                " change it there and reload"
            )
        return path

    async def _apply(self, conf_dir: Path, kind: str, name: str, text: str | None) -> list[str]:
        """Write (or, for None, remove) the fragment and put the whole config in force."""
        assert self.config_path is not None  # conf_dir() said so
        fragment = conf_dir / f"{kind}-{name}.toml"
        async with self._lock:
            with _restored_on_error(fragment, kind):
                if text is None:
                    fragment.unlink()
                else:
                    catalog.write_fragment(conf_dir, name, text, kind)
                new_config = await asyncio.to_thread(self._load, self.config_path)
                changed: list[str] = await self._reload(new_config)
        log.info(
            "console_config_changed",
            fragment=fragment.name,
            removed=text is None,
            changed=changed,
        )
        return changed


def _text(workspace: str, settings: dict[str, Any], section: str) -> str:
    """The entry, and the `[[workspaces]]` entry that adds it to its workspace."""
    member = {"name": workspace, section: [settings["name"]]}
    return catalog.fragment(settings, section) + "\n" + catalog.fragment(member, "workspaces")


def _entry(path: Path, kind: str) -> dict[str, Any]:
    """The one destination (or source) a fragment of the console's holds."""
    entry: dict[str, Any] = tomllib.loads(path.read_text())[f"{kind}s"][0]
    return entry


def _include_of(config_path: Path) -> str | None:
    try:
        include = tomllib.loads(config_path.read_text()).get("include")
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise NoConfigFile(f"{config_path} cannot be read: {exc}") from exc
    return include if isinstance(include, str) else None


@contextlib.contextmanager
def _restored_on_error(path: Path, kind: str) -> Iterator[None]:
    """A failed change leaves the fragment as it was (or absent)."""
    before = path.read_bytes() if path.is_file() else None
    try:
        yield
    except BaseException:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            name = path.stem.removeprefix(f"{kind}-")
            catalog.write_fragment(path.parent, name, before.decode(), kind)
        raise
