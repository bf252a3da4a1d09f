"""The event outbox: emit inside the causing transaction, publish in visibility order, read the feed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from service.domain.errors import EventUnreadable
from service.domain.events import AnyEvent, EventType, check_payload, to_event
from service.domain.ids import new_id

EVENT_COLUMNS = "seq, id, type, customer_id, payload, occurred_at"


async def emit(
    connection: asyncpg.Connection,
    program_id: str,
    type: EventType,
    payload: msgspec.Struct,
    customer_id: str | None = None,
    *,
    occurred_at: datetime,
    event_id: str | None = None,
) -> str:
    """Append an event to the outbox in the caller's transaction (under `event_id`, or a new
    id); returns its id.

    A transaction that rolls back (as a refused idempotent request's does) takes the event
    with it, so nothing is ever published for what did not happen.
    """
    [written] = await emit_all(
        connection,
        program_id,
        [(type, payload)],
        customer_id,
        occurred_at=occurred_at,
        event_ids=None if event_id is None else [event_id],
    )
    return written


async def emit_all(
    connection: asyncpg.Connection,
    program_id: str,
    events: list[tuple[EventType, msgspec.Struct]],
    customer_id: str | None = None,
    *,
    occurred_at: datetime,
    event_ids: list[str] | None = None,
) -> list[str]:
    """`emit` for several events of one customer and instant, in one statement, in order."""
    for type, payload in events:
        check_payload(type, payload)
    if event_ids is None:
        event_ids = [new_id("evt", int(occurred_at.timestamp() * 1000)) for _ in events]
    await connection.execute(
        "INSERT INTO event_outbox (program_id, id, type, customer_id, payload, occurred_at)"
        " SELECT $1, e.id, e.type, $4, e.payload::jsonb, $5"
        " FROM unnest($2::text[], $3::text[], $6::text[]) WITH ORDINALITY AS e(id, type, payload, n) ORDER BY e.n",
        program_id,
        event_ids,
        [type.value for type, _ in events],
        customer_id,
        occurred_at,
        [msgspec.json.encode(payload).decode() for _, payload in events],
    )
    return event_ids


class Announcement(msgspec.Struct, frozen=True):
    """An event a ledger write emits in its own statement for one of its entries (`ordinal`:
    the entry's position in the write, from 1), under an id drawn in advance."""

    ordinal: int
    event_id: str
    type: EventType
    customer_id: str | None
    payload: msgspec.Struct


def announcement(
    ordinal: int, type: EventType, payload: msgspec.Struct, customer_id: str | None, *, at: datetime
) -> Announcement:
    """An event to emit with an entry written at about `at` (its payload checked against its
    type, as `emit` does)."""
    check_payload(type, payload)
    return Announcement(ordinal, new_id("evt", int(at.timestamp() * 1000)), type, customer_id, payload)


def announcement_columns(announcements: list[Announcement]) -> list[list[Any]]:
    """The arrays `outbox_rows` reads: ordinals, ids, types, customer ids and payloads (JSON text)."""
    return [
        [a.ordinal for a in announcements],
        [a.event_id for a in announcements],
        [a.type.value for a in announcements],
        [a.customer_id for a in announcements],
        [msgspec.json.encode(a.payload).decode() for a in announcements],
    ]


def outbox_rows(first: int) -> str:
    """The rows `announcement_columns` gives as parameters ${first} to ${first + 4}, for a
    statement that appends them to `event_outbox` (in ordinal order, so their positions keep
    the entries' order): `e (ordinal, id, type, customer_id, payload)`, payload as JSON text."""
    types = ("integer", "text", "text", "text", "text")
    arrays = ", ".join(f"${first + n}::{kind}[]" for n, kind in enumerate(types))
    return f"unnest({arrays}) AS e (ordinal, id, type, customer_id, payload)"


async def emit_once(
    connection: asyncpg.Connection,
    program_id: str,
    key: str,
    type: EventType,
    payload: msgspec.Struct,
    customer_id: str | None = None,
    *,
    occurred_at: datetime,
) -> bool:
    """Emit unless an event was emitted under `key` before (a record in `event_marks`);
    concurrent callers with one key take turns on its row, and one of them emits."""
    event_id = new_id("evt", int(occurred_at.timestamp() * 1000))
    inserted = await connection.fetchval(
        "INSERT INTO event_marks (program_id, key, event_id, created_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (program_id, key) DO NOTHING RETURNING true",
        program_id,
        key,
        event_id,
        occurred_at,
    )
    if not inserted:
        return False
    await emit(connection, program_id, type, payload, customer_id, occurred_at=occurred_at, event_id=event_id)
    return True


PUBLISH_LOCK = "publish-events:"


async def publish_batch(connection: asyncpg.Connection, program_id: str, now: datetime, batch: int) -> int:
    """Move up to `batch` outbox rows of a program into `events`, numbered after the last
    published one in outbox order, and create their deliveries to the enabled endpoints
    that take their type. One publisher per program at a time: a second gives up at once.
    Returns how many were published."""
    locked = await connection.fetchval(
        "SELECT pg_try_advisory_xact_lock(hashtextextended($1 || $2, 0))", PUBLISH_LOCK, program_id
    )
    if not locked:
        return 0
    # Statements after the lock see every publisher that committed before it; the batch is
    # taken by key (migration 0016), whatever the statistics say.
    published = await connection.fetch(
        "WITH taken AS (SELECT * FROM take_outbox_batch($1, $2)),"
        " last AS (SELECT coalesce(max(seq), 0) AS seq FROM events WHERE program_id = $1)"
        " INSERT INTO events (program_id, seq, id, type, customer_id, payload, occurred_at, published_at)"
        " SELECT $1, last.seq + row_number() OVER (ORDER BY t.position), t.id, t.type, t.customer_id,"
        " t.payload, t.occurred_at, $3 FROM taken t CROSS JOIN last"
        " RETURNING seq, id, type, customer_id",
        program_id,
        batch,
        now,
    )
    if not published:
        return 0
    endpoints = await connection.fetch(
        "SELECT id, event_types FROM webhook_endpoints WHERE program_id = $1 AND enabled", program_id
    )
    deliveries: list[tuple[str, str, str, int, str | None]] = []
    for event in sorted(published, key=lambda row: row["seq"]):
        for endpoint in endpoints:
            if event["type"] in endpoint["event_types"]:
                deliveries.append((new_id("dlv"), endpoint["id"], event["id"], event["seq"], event["customer_id"]))
    if deliveries:
        ids, endpoint_ids, event_ids, seqs, customers = (list(column) for column in zip(*deliveries, strict=True))
        await connection.execute(
            "INSERT INTO webhook_deliveries (program_id, id, endpoint_id, event_id, event_seq, customer_id,"
            " status, next_attempt_at, retry_from, created_at, updated_at)"
            " SELECT $1, d.id, d.endpoint_id, d.event_id, d.seq, d.customer_id, 'pending', $7, $7, $7, $7"
            " FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[])"
            " AS d (id, endpoint_id, event_id, seq, customer_id)",
            program_id,
            ids,
            endpoint_ids,
            event_ids,
            seqs,
            customers,
            now,
        )
    return len(published)


# How a pending delivery says that a dispatcher could not read its event (a newer version's,
# during a rolling deploy): the start of its `last_error`, until a version that reads it
# sends it. Its customer's later events to the endpoint wait behind it (they keep their order).
UNREADABLE_ERROR = "event unreadable by this version: "
UNREADABLE_PENDING = (
    "SELECT program_id, count(*) AS deliveries FROM webhook_deliveries"
    f" WHERE status = 'pending' AND starts_with(last_error, '{UNREADABLE_ERROR}') GROUP BY program_id"
)


async def mark_unreadable(
    connection: asyncpg.Connection, program_id: str, claim: str, unreadable: list[tuple[str, str]], now: datetime
) -> None:
    """Say on each claimed delivery (id, error) that its event could not be read; it stays
    pending, with its attempts and its lease, for a version that reads it."""
    await connection.executemany(
        "UPDATE webhook_deliveries SET last_error = $3, updated_at = $4"
        " WHERE program_id = $1 AND id = $2 AND claim = $5 AND status = 'pending'",
        [(program_id, delivery_id, UNREADABLE_ERROR + error, now, claim) for delivery_id, error in unreadable],
    )


async def unreadable_pending(connection: asyncpg.Connection) -> dict[str, int]:
    """Per program, the pending deliveries whose event a dispatcher could not read."""
    return {row["program_id"]: row["deliveries"] for row in await connection.fetch(UNREADABLE_PENDING)}


def event_from_row(row: asyncpg.Record) -> AnyEvent:
    """An event row as receivers see it."""
    return to_event(row["id"], row["seq"], row["type"], row["occurred_at"], row["customer_id"], row["payload"])


async def feed(
    connection: asyncpg.Connection, program_id: str, after: int, limit: int, types: list[str] | None
) -> tuple[list[AnyEvent], int]:
    """Published events after `after` in seq order (of the given types), and the seq up to
    which the page covers the feed: the last item's, or the last published one's when the
    page is not full (the types filter may have skipped some)."""
    # one statement, one snapshot: the page and the last published seq agree
    rows = await connection.fetch(
        f"WITH last AS (SELECT coalesce(max(seq), 0) AS last_seq FROM events WHERE program_id = $1),"
        f" page AS (SELECT {EVENT_COLUMNS} FROM events WHERE program_id = $1 AND seq > $2"
        f" AND ($4::text[] IS NULL OR type = ANY($4::text[])) ORDER BY seq LIMIT $3)"
        f" SELECT last.last_seq, page.* FROM last LEFT JOIN page ON true ORDER BY page.seq",
        program_id,
        after,
        limit,
        types,
    )
    events: list[AnyEvent] = []
    for row in rows:
        if row["id"] is None:
            continue
        try:
            events.append(event_from_row(row))
        except msgspec.ValidationError:
            # a newer version's event (rolling deploy): the page ends before it, and the
            # cursor does not pass it; alone at the head of the page, the caller retries
            if not events:
                raise EventUnreadable(
                    f"event {row['seq']} cannot be read by this instance; retry", seq=row["seq"]
                ) from None
            return events, events[-1].seq
    if len(events) == limit:
        return events, rows[-1]["seq"]
    return events, max(after, rows[0]["last_seq"])
