"""The privacy portal's inventory and inbox on the JetStream backend, in two replicated
key-value buckets every node reads (docs/scaling.md lists them):

* `CDPD_inventory`: one key per classified field, the blake2b-128 hex of the field path; its
  value is the classification as JSON (`field`, `class`, `classified_at`, `classified_by`).
  Taking a field out writes `"class": null` (who took it out, and when, stay readable).
* `CDPD_inbox`: one key per field a source sent, the hash of source and field; its value is
  the `privacy_inbox` row of the SQLite backend as JSON.

A classification is written whole with `put` on the field's own key, never read, changed and
written back: two people classifying different fields at once cannot lose either, and for one
field the later write in the bucket's order wins on every node. Inbox rows are merged (first
seen the earliest, last seen the latest, a sample kept once taken) with an update at the
revision read, retried when another node wrote the key meanwhile; at worst (nats-server 2.9
lets concurrent updates naming one revision both succeed) a last-seen time is a sighting
behind, never a field lost, since a key is created once and no merge takes a field away.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterable

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from cdpd.cluster.buckets import Latest, latest
from cdpd.cluster.layout import Layout
from cdpd.privacy.store import InboxField, InventoryField

CLASS_RANK = {"red": 0, "yellow": 1, "green": 2}
MERGE_ATTEMPTS = 5
WRITES_AT_ONCE = 64


class Classification(msgspec.Struct, frozen=True):
    """A `CDPD_inventory` value; `class_` None: taken out of the inventory."""

    field: str
    class_: str | None = msgspec.field(name="class")
    classified_at: str
    classified_by: str


_encode = msgspec.json.Encoder().encode
_classification = msgspec.json.Decoder(Classification)
_inbox_field = msgspec.json.Decoder(InboxField)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def inventory_key(field: str) -> str:
    return _digest(field)


def inbox_key(source: str, field: str) -> str:
    return _digest(f"{source}\x00{field}")


def decode_classification(value: bytes | None) -> Classification | None:
    """A bucket value, or None for one cdpd did not write."""
    try:
        return _classification.decode(value or b"")
    except msgspec.DecodeError:
        return None


def merge_inbox(old: InboxField, new: InboxField) -> InboxField:
    """A field seen again keeps its first sighting and sample; a new suggestion replaces the
    old (the SQLite backend's upsert of `privacy_inbox`)."""
    return InboxField(
        source=old.source,
        field=old.field,
        suggested_class=new.suggested_class or old.suggested_class,
        matcher=new.matcher or old.matcher,
        matched_on=new.matched_on or old.matched_on,
        first_seen=min(old.first_seen, new.first_seen),
        last_seen=max(old.last_seen, new.last_seen),
        sample=old.sample if old.sample is not None else new.sample,
    )


async def stop_watching(watcher: KeyValue.KeyWatcher) -> None:
    """Stop a watch; one already gone (unsubscribed, its connection closed) is stopped."""
    with contextlib.suppress(nats.errors.Error):
        await watcher.stop()  # type: ignore[no-untyped-call]


class ClusterPrivacy:
    """The inventory and inbox as every node and the CLI read and write them."""

    def __init__(
        self, js: JetStreamContext, layout: Layout, inventory: KeyValue, inbox: KeyValue
    ) -> None:
        self._js = js
        self._layout = layout
        self.inventory_kv = inventory
        self.inbox_kv = inbox

    @classmethod
    async def of(cls, js: JetStreamContext, layout: Layout) -> ClusterPrivacy:
        return cls(
            js,
            layout,
            await js.key_value(layout.inventory_bucket),
            await js.key_value(layout.inbox_bucket),
        )

    async def latest_classifications(self) -> list[Latest]:
        return await latest(self._js, self._layout.inventory_bucket)

    async def classify(self, field: str, class_: str | None, at: str, by: str) -> int:
        """Put `field` in the inventory with `class_` (None: take it out); the revision."""
        record = Classification(field, class_, at, by)
        return await self.inventory_kv.put(inventory_key(field), _encode(record))

    async def classifications(self) -> list[Classification]:
        """Every field's latest record, those taken out of the inventory included."""
        found = (decode_classification(e.value) for e in await self.latest_classifications())
        return [c for c in found if c is not None]

    async def inventory(self) -> list[InventoryField]:
        """The classified fields, red first (the SQLite backend's order)."""
        found = [
            InventoryField(c.field, c.class_, c.classified_at, c.classified_by)
            for c in await self.classifications()
            if c.class_ is not None
        ]
        return sorted(found, key=lambda f: (CLASS_RANK.get(f.class_, 3), f.field))

    async def inbox(
        self,
        *,
        source: str | None = None,
        include_classified: bool = False,
        since: str | None = None,
    ) -> list[InboxField]:
        """The fields seen (last seen from `since`), strongest suggestion first; without
        `include_classified`, only those nobody classified yet."""
        classes = {c.field: c.class_ for c in await self.classifications() if c.class_}
        found = []
        for entry in await latest(self._js, self._layout.inbox_bucket):
            try:
                seen = _inbox_field.decode(entry.value)
            except msgspec.DecodeError:
                continue
            if source is not None and seen.source != source:
                continue
            if since is not None and seen.last_seen < since:
                continue
            class_ = classes.get(seen.field)
            if class_ is not None and not include_classified:
                continue
            found.append(msgspec.structs.replace(seen, class_=class_))
        return sorted(
            found,
            key=lambda f: (CLASS_RANK.get(f.suggested_class or "", 3), f.field, f.source),
        )

    async def fold_inbox(self, rows: Iterable[InboxField]) -> list[InboxField]:
        """Merge each row into its key; the rows that could not be written (to try again)."""
        limit = asyncio.Semaphore(WRITES_AT_ONCE)

        async def fold(row: InboxField) -> InboxField | None:
            async with limit:
                try:
                    await self._fold_one(row)
                except Exception:  # nats-py raises several unrelated types for one lost link
                    return row
                return None

        results = await asyncio.gather(*(fold(row) for row in rows))
        return [row for row in results if row is not None]

    async def _fold_one(self, row: InboxField) -> None:
        key = inbox_key(row.source, row.field)
        for _ in range(MERGE_ATTEMPTS):
            try:
                entry = await self.inbox_kv.get(key)
            except KeyNotFoundError:
                try:
                    await self.inbox_kv.create(key, _encode(row))
                    return
                except KeyWrongLastSequenceError:
                    continue  # another node created it first: merge into theirs
            try:
                old = _inbox_field.decode(entry.value or b"")
            except msgspec.DecodeError:
                old = row
            merged = merge_inbox(old, row)
            if merged == old:
                return
            try:
                await self.inbox_kv.update(key, _encode(merged), last=entry.revision)
                return
            except KeyWrongLastSequenceError:
                continue
        raise KeyWrongLastSequenceError(description=f"inbox key {key} kept changing")
