"""The rows a request's rejected messages leave in the `rejects` table, bounded per request.

A tiny compressed body can hold a hundred thousand empty events; one row each would let a single
request write megabytes. The first `limit` rejections keep a row each (with their payload); the
rest are one summary row whose payload counts them by reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import msgspec

from cdpd.ingest.normalize import Rejection, RequestFacts
from cdpd.model.rows import RejectRow

SUMMARY_CODE = "more_rejected"


def reject_rows(
    rejections: Sequence[Rejection], facts: RequestFacts, limit: int
) -> list[RejectRow]:
    """A row for each of the first `limit` rejections, and one summary row for the others."""
    rows = [_row(r.code, r.reason, r.message_id, r.payload, facts) for r in rejections[:limit]]
    rest = rejections[limit:]
    if rest:
        counts = Counter(r.code for r in rest)
        reasons = ", ".join(f"{code} {n}" for code, n in sorted(counts.items()))
        reason = (
            f"{len(rest)} more messages of this request were rejected ({reasons}); only the "
            f"first {limit} of a request are kept one by one (server.max_rejects_per_request)"
        )
        payload = msgspec.json.encode(dict(sorted(counts.items()))).decode()
        rows.append(_row(SUMMARY_CODE, reason, None, payload, facts))
    return rows


def _row(
    code: str, reason: str, message_id: str | None, payload: str, facts: RequestFacts
) -> RejectRow:
    return RejectRow(
        received_at=facts.received_at,
        source=facts.source,
        request_id=facts.request_id,
        reason_code=code,
        reason=reason,
        message_id=message_id,
        payload=payload,
    )
