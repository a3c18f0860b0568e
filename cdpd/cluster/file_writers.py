"""The nodes that write file destinations' files, and what each made of a regulation's file
target: read by the regulations worker (is every file erased?) and written by each node
(`cdpd.cluster.file_erasure`).

Every node writes its own file for a file destination, so a regulation's `file:<name>` target
is done once every node that writes it has erased the users' lines from its own. Keys (docs/
scaling.md lists them):
- `files.<node id>` in the positions bucket: the node's heartbeat (JSON `FileWriter`), written
  every `HEARTBEAT_S` while it runs; kept after it stops, so a node that is down is still
  waited for, until it has not been seen for `[storage.jetstream] node_gone_s`;
- `file.<regulation id>.<destination>.<node id>` in the outcomes bucket: that node's erasure
  for that regulation (`done` with the lines removed, or `failed` with the error; JSON
  `Outcome` of `cdpd.cluster.profile_commands`).

A node's id is kept in its data folder (`node_id`), so it is the same across restarts (a
node's name, `host:pid`, is not) and belongs to the files written beside it.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from cdpd.cluster.buckets import current
from cdpd.cluster.layout import Layout, token
from cdpd.cluster.profile_commands import Outcome, outcome_of

HEARTBEAT_S = 5.0
WRITERS = "files"
ERASED = "file"
NODE_ID_FILE = "node_id"


class FileWriter(msgspec.Struct, frozen=True, kw_only=True):
    """`files.<node id>`: a node that writes file destinations, as last seen."""

    node_id: str
    node: str  # its name when last seen (host:pid)
    destinations: list[str]  # the file destinations of its config
    seen_at_ms: int


_writer = msgspec.json.Decoder(FileWriter)


def node_id(data_dir: Path) -> str:
    """This node's id, made on its first start (the data folder is the node's own: locked)."""
    path = data_dir / NODE_ID_FILE
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        found = ""
    if found.isalnum():
        return found
    made = secrets.token_hex(8)
    data_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(NODE_ID_FILE + ".tmp")
    temporary.write_text(made + "\n")
    temporary.replace(path)
    return made


def writer_key(node: str) -> str:
    return f"{WRITERS}.{node}"


def erased_key(regulation_id: str, destination: str, node: str) -> str:
    return f"{ERASED}.{regulation_id}.{token(destination)}.{node}"


async def writers(js: JetStreamContext, layout: Layout, destination: str) -> list[FileWriter]:
    """Every node that wrote `destination`'s file at some point (gone or not)."""
    entries = await current(js, layout.positions_bucket, f"{WRITERS}.*")
    found = []
    for entry in entries:
        try:
            writer = _writer.decode(entry.value)
        except msgspec.MsgspecError:
            continue  # written by a newer or broken cdpd: not a writer this one knows
        if destination in writer.destinations:
            found.append(writer)
    return sorted(found, key=lambda w: w.node_id)


async def writer(positions: KeyValue, node: str) -> FileWriter | None:
    """The node's heartbeat as last written, if any."""
    try:
        entry = await positions.get(writer_key(node))
        return _writer.decode(entry.value or b"")
    except (KeyNotFoundError, msgspec.MsgspecError):  # unreadable: as if never seen
        return None


async def erased(
    outcomes: KeyValue, regulation_id: str, destination: str, node: str
) -> Outcome | None:
    return await outcome_of(outcomes, erased_key(regulation_id, destination, node))
