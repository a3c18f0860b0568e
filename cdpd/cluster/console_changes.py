"""The console's config changes on a JetStream node: the SQLite backend's forms and checks, with
the fragment stored in the `CDPD_confd` bucket instead of written to this box only.

A change is checked on the node where it is made, before it is stored: the fragment is written
into conf.d, the whole config loaded as `cdpd check-config` loads it and built as the node's
reload would build it, and the fragment put back as it was, whatever the outcome. A change that
passes is stored (one key, `<kind>-<name>.toml`), and the answer waits until this node's follow
of the bucket (`cdpd.cluster.confd_sync`) has put it in force; every other node follows it too.

Only files of the bucket's are changed: a source defined in the main file or in a hand-written
conf.d file is changed there. Destinations are built when a node starts on this backend
(`cdpd.cluster.reloading`): their forms say so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.errors import APIError

from cdpd.cluster.confd_sync import ConfdSync, owned, put_back_after
from cdpd.cluster.console_state import cluster_answers
from cdpd.cluster.reloading import NodeConfig
from cdpd.confd import write_atomically
from cdpd.config import Config, ConfigError
from cdpd.console.changes import ConfigChanges

log = structlog.get_logger("cdpd.console")

EXPECTED_LAST_SUBJECT_SEQUENCE = Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value
WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's error codes for a stale expected revision
DESTINATIONS_AT_RESTART = (
    "destinations are built when a node starts on the JetStream backend: add or change them in"
    " the shared config (and conf.d) of every node, then restart the nodes one at a time"
)


class ClusterChanges(ConfigChanges):
    def __init__(
        self,
        config_path: Path,
        load: Callable[[Path], Config],
        node_config: NodeConfig,
        sync: ConfdSync,
        js: JetStreamContext,
    ) -> None:
        super().__init__(config_path, load, node_config.reload)
        self._node_config = node_config
        self._sync = sync
        self._js = js

    def fragment_of(self, name: str, kind: str = "destination") -> Path | None:
        found = super().fragment_of(name, kind)
        return found if found is not None and owned(found) else None

    async def add_destination(self, workspace: str, settings: dict[str, Any]) -> list[str]:
        raise ConfigError(DESTINATIONS_AT_RESTART)

    async def replace_destination(self, workspace: str, settings: dict[str, Any]) -> list[str]:
        raise ConfigError(DESTINATIONS_AT_RESTART)

    async def set_enabled(
        self, workspace: str, name: str, enabled: bool, kind: str = "destination"
    ) -> list[str]:
        if kind == "destination":
            raise ConfigError(DESTINATIONS_AT_RESTART)
        return await super().set_enabled(workspace, name, enabled, kind)

    def _own(self, conf_dir: Path, kind: str, name: str) -> Path:
        path = super()._own(conf_dir, kind, name)
        if not owned(path):
            raise ConfigError(f"{name} is defined by hand in {path} on this node: change it there")
        return path

    async def _apply(self, conf_dir: Path, kind: str, name: str, text: str | None) -> list[str]:
        key = f"{kind}-{name}.toml"
        async with self._lock:
            return await self._checked_and_stored(conf_dir / key, text)

    async def _checked_and_stored(self, path: Path, text: str | None) -> list[str]:
        key = path.name
        async with self._sync.lock:
            changed = await self._check(path, text)
            checked_against = self._sync.revisions.get(key, 0)
        revision = await self._store(key, text, checked_against)
        if not await self._sync.applied(revision):
            raise ConfigError(
                f"{key} is stored in the cluster but this node has not put it in force yet:"
                " see its log (confd_refused) and the cluster's state"
            )
        log.info("console_config_stored", key=key, removed=text is None, revision=revision)
        return changed

    async def _check(self, path: Path, text: str | None) -> list[str]:
        """The sections the change would change; ConfigError when the config refuses it."""
        config = await asyncio.to_thread(self._checked, path, text)
        old = self._node_config.config
        return [s for s in config.__struct_fields__ if getattr(config, s) != getattr(old, s)]

    def _checked(self, path: Path, text: str | None) -> Config:
        """The config with the change, as a reload would put it in force (the file put back)."""
        if path.exists() and not owned(path):
            raise ConfigError(f"{path} is written by hand on this node: change it there")
        assert self.config_path is not None  # conf_dir() said so
        with put_back_after(path):
            if text is None:
                path.unlink(missing_ok=True)
            else:
                write_atomically(path, self._sync.text_of(text))
            config, _ = self._node_config.check(self._load(self.config_path))
        return config

    @cluster_answers
    async def _store(self, key: str, text: str | None, checked_against: int) -> int:
        """The bucket's new revision of `key` (a delete marker for None), stored only over the
        revision this node checked the change against: a change made meanwhile on another
        node is not overwritten unseen."""
        headers = {EXPECTED_LAST_SUBJECT_SEQUENCE: str(checked_against)}
        if text is None:
            headers["KV-Operation"] = "DEL"
        try:
            ack = await self._js.publish(
                f"$KV.{self._sync.bucket}.{key}",
                b"" if text is None else text.encode(),
                headers=headers,
            )
        except APIError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise
            raise ConfigError(
                f"{key} was changed on another node meanwhile: look again (its change reaches"
                " this node within seconds) and make yours again"
            ) from None
        return int(ack.seq)
