"""conf.d from the cluster: the console's config changes on the JetStream backend.

A change made from a node's console is one key of the `CDPD_confd` bucket: the key is the
conf.d file's name (`source-<name>.toml`), the value its TOML; a removal deletes the key. The
bucket keeps HISTORY revisions of each key (`nats kv history CDPD_confd source-web.toml`).

Every node follows the bucket: it writes each file into its own conf.d (atomically, MARKER as
its first line: that makes the file the bucket's), removes a file of the bucket's whose key was
deleted, and puts the whole config in force through the node's live reload. A file without the
marker is hand-written: the bucket never writes over it nor removes it (a key naming one is
logged, `confd_hand_written_kept`, and left out on this node). A batch of changes the node's
config cannot take is put back as it was and logged (`confd_refused`).

A node that starts brings its conf.d up to date with the bucket before it builds anything from
its config; a follow that fails (a lost link) starts again the same way: every key written,
every file of the bucket's that has no key any more removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from cdpd.cluster import buckets
from cdpd.cluster.browse import forget, reading
from cdpd.cluster.layout import Layout
from cdpd.confd import write_atomically
from cdpd.config import Config, ConfigError, load

if TYPE_CHECKING:
    from cdpd.cluster.node import NodeParts

log = structlog.get_logger("cdpd.cluster")

HISTORY = 64  # revisions kept per key (the most JetStream keeps)
MARKER_PREFIX = "# cdpd: from the cluster's "
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.toml")
FOLLOW_BATCH = 100
FOLLOW_WAIT_S = 1.0  # a fetch waits this long for a change, then asks again (stop is seen)
IDLE_CHECK = 5  # fetches that found nothing before the consumer is checked to exist
APPLIED_WAIT_S = 30.0  # how long a console change waits for this node to put it in force


def marker(bucket: str) -> str:
    return f"{MARKER_PREFIX}{bucket} bucket; change it from the console, not here\n"


def owned(path: Path) -> bool:
    """Whether the file in conf.d is the bucket's (written by a node, not by hand)."""
    try:
        with path.open("rb") as handle:
            return handle.readline().decode(errors="replace").startswith(MARKER_PREFIX)
    except OSError:
        return False


def contents(paths: Iterable[Path]) -> list[tuple[Path, bytes | None]]:
    return [(path, path.read_bytes() if path.is_file() else None) for path in paths]


def put_back(before: list[tuple[Path, bytes | None]]) -> None:
    """Files as `contents` read them (absent ones removed)."""
    for path, content in before:
        if content is None:
            path.unlink(missing_ok=True)
        else:
            write_atomically(path, content.decode())


@contextlib.contextmanager
def put_back_after(path: Path) -> Iterator[None]:
    """The file as it was once the block is done, whatever its outcome."""
    before = contents([path])
    try:
        yield
    finally:
        put_back(before)


class ConfdSync:
    """This node's conf.d kept as the bucket says. `lock` is held by whoever writes conf.d on
    this node (the follow, or a console change being checked)."""

    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        conf_dir: Path,
    ) -> None:
        self._js = js
        self.bucket = bucket
        self.conf_dir = conf_dir
        self.lock = asyncio.Lock()
        self.revision = 0  # the bucket's sequence conf.d has reached
        self.revisions: dict[str, int] = {}  # each key's revision conf.d holds (deletes too)
        self._advanced = asyncio.Condition()

    @property
    def stream(self) -> str:
        return f"KV_{self.bucket}"

    def text_of(self, value: str) -> str:
        """A file's content as nodes write it: the marker, then the bucket's value."""
        return marker(self.bucket) + value

    async def catch_up(self) -> list[tuple[Path, bytes | None]]:
        """Write every key of the bucket and remove the bucket's files with no key; the files
        changed, as they were before. The config is not reloaded here."""
        floor = int((await self._js.stream_info(self.stream)).state.last_seq)
        entries = await buckets.latest(self._js, self.bucket)
        keys = {e.key for e in entries if not e.deleted}
        async with self.lock:
            gone = [path for path in self._owned_files() if path.name not in keys]
            named = [self.conf_dir / e.key for e in entries if FILE_NAME.fullmatch(e.key)]
            before = contents([*named, *gone])
            changed = {e.key for e in entries if self._put(e.key, _value(e))}
            self.revisions = {e.key: e.revision for e in entries}
            for path in gone:
                path.unlink(missing_ok=True)
                changed.add(path.name)
        await self._advance(max([floor, *(e.revision for e in entries)]))
        if changed:
            log.info("confd_caught_up", files=sorted(changed), revision=self.revision)
        return [(path, content) for path, content in before if path.name in changed]

    async def run(self, apply: Callable[[], Awaitable[object]], stop: asyncio.Event) -> None:
        """Catch up (a restart after a lost link reads the bucket again), then follow the
        bucket; `apply` puts conf.d in force (ConfigError: refused)."""
        changed = await self.catch_up()
        if changed:
            await self._reload_or_log(apply, changed, self.revision)
        config = reading(DeliverPolicy.BY_START_SEQUENCE, start_seq=self.revision + 1)
        sub = await self._js.pull_subscribe(
            f"$KV.{self.bucket}.>", stream=self.stream, config=config
        )
        try:
            idle = 0
            while not stop.is_set():
                try:
                    messages = await sub.fetch(FOLLOW_BATCH, timeout=FOLLOW_WAIT_S)
                except (TimeoutError, NatsTimeoutError):
                    idle += 1
                    if idle % IDLE_CHECK == 0:
                        # A consumer lost with its server (or past its inactivity after a long
                        # disconnection) would wait forever: NotFoundError restarts the follow.
                        await sub.consumer_info()
                    continue
                idle = 0
                if messages:
                    await self._follow(apply, messages)
        finally:
            with contextlib.suppress(Exception):
                await forget(self._js, self.stream, sub)

    async def applied(self, revision: int, timeout_s: float = APPLIED_WAIT_S) -> bool:
        """Wait until conf.d has reached `revision` and its reload is done; False when it did
        not in time."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s), self._advanced:
                await self._advanced.wait_for(lambda: self.revision >= revision)
                return True
        return False

    async def _follow(self, apply: Callable[[], Awaitable[object]], messages: list[Msg]) -> None:
        """One batch of changes written, then put in force with one reload."""
        prefix = f"$KV.{self.bucket}."
        changes = [(m.subject[len(prefix) :], _value_of(m)) for m in messages]
        async with self.lock:
            touched = [self.conf_dir / key for key, _ in changes if FILE_NAME.fullmatch(key)]
            before = contents(dict.fromkeys(touched))
            for key, value in changes:
                self._put(key, value)
            for message in messages:
                self.revisions[message.subject[len(prefix) :]] = message.metadata.sequence.stream
        revision = messages[-1].metadata.sequence.stream
        await self._reload_or_log(apply, before, revision)
        await self._advance(revision)

    async def _reload_or_log(
        self,
        apply: Callable[[], Awaitable[object]],
        before: list[tuple[Path, bytes | None]],
        revision: int,
    ) -> None:
        try:
            await apply()
        except ConfigError as exc:
            files = [p.name for p, _ in before]
            log.error("confd_refused", error=str(exc), files=files, revision=revision)
            async with self.lock:
                put_back(before)
            return
        log.info("confd_applied", files=[p.name for p, _ in before], revision=revision)

    def _put(self, key: str, value: bytes | None) -> bool:
        """Write (None: remove) one file of the bucket's; whether conf.d changed."""
        if not FILE_NAME.fullmatch(key):
            log.error("confd_key_ignored", key=key, reason="not a conf.d file name")
            return False
        path = self.conf_dir / key
        if path.exists() and not owned(path):
            log.error("confd_hand_written_kept", file=key, conf_dir=str(self.conf_dir))
            return False
        if value is None:
            if not path.exists():
                return False
            path.unlink()
            return True
        text = self.text_of(value.decode(errors="replace"))
        if path.is_file() and path.read_text(errors="replace") == text:
            return False
        write_atomically(path, text)
        return True

    def _owned_files(self) -> list[Path]:
        if not self.conf_dir.is_dir():
            return []
        return [p for p in sorted(self.conf_dir.glob("*.toml")) if owned(p)]

    async def _advance(self, revision: int) -> None:
        if revision > self.revision:
            async with self._advanced:
                self.revision = revision
                self._advanced.notify_all()


def _value(entry: buckets.Latest) -> bytes | None:
    return None if entry.deleted else entry.value


def _value_of(message: Msg) -> bytes | None:
    """The key's new value; None for a deleted or purged key."""
    operation = (message.headers or {}).get("KV-Operation")
    return None if operation in buckets.DELETED else (message.data or b"")


async def following(
    js: JetStreamContext, layout: Layout, config_path: Path | None, config: Config
) -> tuple[Config, ConfdSync | None]:
    """conf.d brought up to date with the bucket, and the config to start with (the file's
    again, with the bucket's files; the one given when those are refused). No sync without a
    config file or without its `include`."""
    include = config.include
    if config_path is None or include is None:
        if await buckets.current(js, layout.confd_bucket, meta_only=True):
            log.warning("confd_not_followed", reason="the node has no config file or include")
        return config, None
    sync = ConfdSync(js, layout.confd_bucket, config_path.parent / include)
    before = await sync.catch_up()
    if not before:
        return config, sync
    try:
        return await asyncio.to_thread(load, config_path), sync
    except ConfigError as exc:
        log.error("confd_refused", error=str(exc), files=[p.name for p, _ in before])
        async with sync.lock:
            put_back(before)
        return config, sync


@asynccontextmanager
async def confd_stage(parts: NodeParts) -> AsyncIterator[ConfdSync]:
    """Follow the bucket while the node serves, each change put in force by its reload."""
    sync, path = parts.confd, parts.config_path
    if sync is None or path is None:
        raise RuntimeError("conf.d is not followed on this node")

    async def apply() -> None:
        await parts.in_force.reload(await asyncio.to_thread(load, path))

    stop = asyncio.Event()
    following_task = parts.tasks.create_task(
        parts.supervised("confd", functools.partial(sync.run, apply), stop), name="confd"
    )
    try:
        yield sync
    finally:
        stop.set()
        following_task.cancel()  # a change not applied yet is read again at the next start
        await asyncio.gather(following_task, return_exceptions=True)
