"""Changes made from the console: a destination added from the catalog, enabled or disabled.

Each change is one TOML fragment in the main config's `include` directory
(`destination-<name>.toml`, holding the destination and the `[[workspaces]]` entry that puts it
in its workspace). A change writes its fragment, loads the whole config again as `cdpd
check-config` does and hands it to the live reload (`Consumers.reload`, SIGHUP's); when either
refuses, the fragment is put back as it was and nothing changed. One change at a time.
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

    def fragment_of(self, destination: str) -> Path | None:
        """The console's fragment holding `destination`, when it is one of the console's."""
        try:
            found = self.conf_dir() / f"destination-{destination}.toml"
        except NoConfigFile:
            return None
        return found if found.is_file() else None

    async def add_destination(self, workspace: str, settings: dict[str, Any]) -> list[str]:
        conf_dir = self.conf_dir()
        return await self._apply(conf_dir, settings["name"], _text(workspace, settings))

    async def replace_destination(self, workspace: str, settings: dict[str, Any]) -> list[str]:
        """New settings for a destination the console added (its `enabled` kept)."""
        conf_dir = self.conf_dir()
        path = self._own(conf_dir, settings["name"])
        previous = tomllib.loads(path.read_text())["destinations"][0]
        if "enabled" in previous:
            settings = {**settings, "enabled": previous["enabled"]}
        return await self._apply(conf_dir, settings["name"], _text(workspace, settings))

    def _own(self, conf_dir: Path, destination: str) -> Path:
        path = conf_dir / f"destination-{destination}.toml"
        if not path.is_file():
            raise ConfigError(
                f"{destination} is defined in {self.config_path}, not by the console:"
                " change it there and reload"
            )
        return path

    async def set_enabled(self, workspace: str, destination: str, enabled: bool) -> list[str]:
        conf_dir = self.conf_dir()
        path = self._own(conf_dir, destination)
        document = tomllib.loads(path.read_text())
        settings = dict(document["destinations"][0])
        settings["enabled"] = enabled
        return await self._apply(conf_dir, destination, _text(workspace, settings))

    async def _apply(self, conf_dir: Path, name: str, text: str) -> list[str]:
        assert self.config_path is not None  # conf_dir() said so
        async with self._lock:
            with _restored_on_error(conf_dir / f"destination-{name}.toml"):
                catalog.write_fragment(conf_dir, name, text)
                new_config = await asyncio.to_thread(self._load, self.config_path)
                changed: list[str] = await self._reload(new_config)
        log.info("console_config_changed", fragment=f"destination-{name}.toml", changed=changed)
        return changed


def _text(workspace: str, settings: dict[str, Any]) -> str:
    """The destination, and the `[[workspaces]]` entry that adds it to its workspace."""
    member = {"name": workspace, "destinations": [settings["name"]]}
    return catalog.fragment(settings) + "\n" + catalog.fragment(member, "workspaces")


def _include_of(config_path: Path) -> str | None:
    try:
        include = tomllib.loads(config_path.read_text()).get("include")
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise NoConfigFile(f"{config_path} cannot be read: {exc}") from exc
    return include if isinstance(include, str) else None


@contextlib.contextmanager
def _restored_on_error(path: Path) -> Iterator[None]:
    """A failed change leaves the fragment as it was (or absent)."""
    before = path.read_bytes() if path.is_file() else None
    try:
        yield
    except BaseException:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            catalog.write_fragment(
                path.parent, path.stem.removeprefix("destination-"), before.decode()
            )
        raise
