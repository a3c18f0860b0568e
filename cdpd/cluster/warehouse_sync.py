"""*Sync now* for a warehouse on the JetStream backend, asked on any node (the console's
button, `cdpd warehouse sync NAME`) and carried out by the holder of the warehouse's lease.

The asker publishes a core NATS request on `<prefix>.sync.<warehouse>` (no stream holds it:
a request nobody is listening to is forgotten) with an inbox of its own for the answers. Only
the lease holder's leader service listens, and only while it holds the lease; before it
answers it reads the lease key back, so a former holder that has not noticed its loss stays
silent. The holder answers at once, `started` or `already_syncing` (it never runs two syncs of
one warehouse at once: a request during a sync is not queued), and after a started sync, with
`synced` and the sync's report. No answer at all within `ANSWER_S` (nobody holds the lease, or
the holder is stuck) is `SyncUnavailable`, with the reason.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from cdpd.cluster.connect import connected
from cdpd.cluster.layout import Layout
from cdpd.cluster.warehouse_status import lease_holder
from cdpd.config import Config
from cdpd.warehouse.report import SyncReport

STARTED: Final = "started"
ALREADY_SYNCING: Final = "already_syncing"
SYNCED: Final = "synced"
ANSWER_S = 5.0  # the holder's first answer comes at once; this covers a busy node
NO_RESPONDERS = "503"  # the status header the server sends when nobody listens


class SyncAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """An answer of the lease holder, as it travels on the wire."""

    state: Literal["started", "already_syncing", "synced"]
    node: str
    report: SyncReport | None = None  # with `synced`


class SyncUnavailable(Exception):
    """No node took the request (its message says why)."""


encode = msgspec.json.encode
_answer = msgspec.json.Decoder(SyncAnswer)


class WarehouseSyncs:
    """The asking side, on any node and in the CLI."""

    def __init__(self, client: Client, js: JetStreamContext, layout: Layout) -> None:
        self._client = client
        self._js = js
        self._layout = layout

    async def ask(self, warehouse: str, wait_s: float) -> SyncAnswer:
        """`synced` with the report when the sync ends within `wait_s`; `started` when it
        runs longer (it goes on); `already_syncing`. Raises SyncUnavailable."""
        inbox = self._client.new_inbox()
        answers = await self._client.subscribe(inbox, max_msgs=2)
        try:
            subject = self._layout.warehouse_sync_subject(warehouse)
            await self._client.publish(subject, b"", reply=inbox)
            first = await self._first(answers, warehouse)
            if first.state != STARTED:
                return first
            try:
                return self._decoded(await answers.next_msg(timeout=wait_s))
            except NatsTimeout:
                return first
        finally:
            await answers.unsubscribe()

    async def _first(self, answers: Subscription, warehouse: str) -> SyncAnswer:
        try:
            msg = await answers.next_msg(timeout=ANSWER_S)
        except NatsTimeout:
            holder = await lease_holder(self._js, self._layout, warehouse) or "no node"
            raise SyncUnavailable(
                f"{holder} (holding the lease of warehouse {warehouse}) did not answer within"
                f" {ANSWER_S:g} s; its next sync is at most interval_s away"
            ) from None
        if (msg.headers or {}).get("Status") == NO_RESPONDERS:
            raise SyncUnavailable(
                f"no node holds the lease of warehouse {warehouse} now (a node takes it within"
                " seconds of starting, or of the last holder stopping): ask again shortly"
            )
        return self._decoded(msg)

    def _decoded(self, msg: Msg) -> SyncAnswer:
        try:
            return _answer.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise SyncUnavailable(f"the lease holder's answer is unreadable: {exc}") from None


def describe(answer: SyncAnswer, wait_s: float) -> str:
    """The answer in a few words (the console's notice; the CLI's line when it has no report)."""
    if answer.state == ALREADY_SYNCING:
        return f"a sync is already running on node {answer.node}; it is listed once it ends"
    if answer.report is None:
        return (
            f"sync started on node {answer.node}, still running after {wait_s:g} s;"
            " it is listed once it ends"
        )
    report = answer.report
    return f"sync {report.status}: {report.messages} messages (node {answer.node})"


async def ask_cluster(config: Config, warehouse: str, wait_s: float) -> SyncAnswer:
    """`cdpd warehouse sync NAME` on the JetStream backend: connect, ask, wait."""
    jetstream = config.storage.jetstream
    async with connected(jetstream, name="cdpd warehouse sync") as client:
        syncs = WarehouseSyncs(client, client.jetstream(), Layout.of(jetstream))
        return await syncs.ask(warehouse, wait_s)
