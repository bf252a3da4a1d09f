"""A customer's history: the entries that touched their accounts, newest first, in words."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec

from service.db.transaction import snapshot
from service.domain.errors import NotFound
from service.domain.history import (
    EntryFacts,
    HistoryItem,
    Wording,
    decode_cursor,
    encode_cursor,
    history_item,
    net_changes,
)

# Before every entry: the first page starts here, so the page query always has a bound the
# postings index can seek to (an `IS NULL OR` would make it a filter).
_END_OF_TIME = (datetime(9999, 12, 31, tzinfo=UTC), 0)

# Each of the customer's few accounts gives its newest entries before the cursor, read
# backwards along postings (program_id, account_id, posted_at, entry_id) and stopped after
# `limit + 1`; of those, the newest `limit + 1` entries overall are the page (and a sign
# that there is a next one).
_PAGE = (
    "SELECT e.id, e.posted_at, e.kind, e.metadata, o.release_at FROM ("
    "  SELECT DISTINCT x.posted_at, x.entry_id FROM unnest($2::bigint[]) AS acc(id)"
    "  CROSS JOIN LATERAL (SELECT DISTINCT p.posted_at, p.entry_id FROM postings p"
    "    WHERE p.program_id = $1 AND p.account_id = acc.id AND (p.posted_at, p.entry_id) < ($3, $4)"
    "    ORDER BY p.posted_at DESC, p.entry_id DESC LIMIT $5) AS x"
    "  ORDER BY x.posted_at DESC, x.entry_id DESC LIMIT $5) AS page"
    " JOIN entries e ON e.program_id = $1 AND e.id = page.entry_id"
    " LEFT JOIN orders o ON e.kind = 'order.award' AND o.program_id = e.program_id"
    "  AND o.shop_id = e.metadata->>'shop_id' AND o.id = e.metadata->>'order_id'"
    " ORDER BY page.posted_at DESC, page.entry_id DESC"
)
_CHANGES = (
    "SELECT p.entry_id, a.kind, sum(p.amount)::bigint AS net FROM postings p"
    " JOIN accounts a ON a.program_id = p.program_id AND a.id = p.account_id"
    " WHERE p.program_id = $1 AND p.entry_id = ANY($2::bigint[]) AND p.account_id = ANY($3::bigint[])"
    " GROUP BY p.entry_id, a.kind"
)


class HistoryPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[HistoryItem]
    next_cursor: str | None


async def customer_history(program_id: str, customer_id: str, limit: int, cursor: str | None) -> HistoryPage:
    """The entries that touched the customer's accounts, newest first, a page at a time."""
    before = decode_cursor(cursor) if cursor else _END_OF_TIME
    async with snapshot() as connection:
        program = await connection.fetchrow("SELECT time_zone, currency FROM programs WHERE id = $1", program_id)
        accounts = await connection.fetch(
            "SELECT id FROM accounts WHERE program_id = $1 AND customer_id = $2", program_id, customer_id
        )
        if program is None or not accounts:
            raise NotFound(f"customer {customer_id} not found", field="customer_id")
        account_ids = [row["id"] for row in accounts]
        rows = await connection.fetch(_PAGE, program_id, account_ids, *before, limit + 1)
        page = rows[:limit]
        changes: dict[int, dict[str, int]] = {row["id"]: {} for row in page}
        for row in await connection.fetch(_CHANGES, program_id, list(changes), account_ids):
            changes[row["entry_id"]][row["kind"]] = row["net"]
    words = Wording(zone=ZoneInfo(program["time_zone"]), currency=program["currency"])
    items = [
        history_item(
            EntryFacts(
                entry_id=row["id"],
                posted_at=row["posted_at"],
                kind=row["kind"],
                metadata=json.loads(row["metadata"]),
                changes=net_changes(changes[row["id"]]),
                available_from=row["release_at"],
            ),
            words,
        )
        for row in page
    ]
    next_cursor = encode_cursor(page[-1]["posted_at"], page[-1]["id"]) if len(rows) > limit else None
    return HistoryPage(items=items, next_cursor=next_cursor)
