"""Webhook endpoints of a program (create, list, read, change, delete, rotate the secret),
their delivery log, manual re-delivery, and the pull feed of events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from service.config import Settings
from service.db import events as event_rows
from service.db.transaction import in_transaction
from service.domain.clock import Clock
from service.domain.destinations import PUBLIC_ONLY, DestinationPolicy, url_problem
from service.domain.errors import Conflict, InvalidInput, NotFound, TooManyEndpoints
from service.domain.events import AnyEvent, EventType
from service.domain.ids import new_id
from service.domain.webhooks import new_secret, rotate
from service.usecases.idempotency import fingerprint, run_once, run_once_if_keyed

# Every event is delivered to each enabled endpoint that takes its type, and the list of
# endpoints is answered whole: a program has at most this many (enabled or not).
MAX_ENDPOINTS = 20


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    url: str
    description: str
    event_types: list[EventType]
    enabled: bool
    disabled_reason: str | None
    consecutive_failures: int
    created_at: datetime
    updated_at: datetime


class NewEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint just made, with its signing secret (shown only here)."""

    endpoint: Endpoint
    secret: str


class RotatedSecret(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint's new signing secret (shown only here), and until when the one it
    replaced still signs deliveries (None: retired at once)."""

    endpoint_id: str
    secret: str
    previous_secret_expires_at: datetime | None
    rotated_at: datetime


class EndpointChange(msgspec.Struct, frozen=True, kw_only=True):
    url: str | msgspec.UnsetType = msgspec.UNSET
    description: str | msgspec.UnsetType = msgspec.UNSET
    event_types: list[EventType] | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    endpoint_id: str
    event_id: str
    event_seq: int
    event_type: str
    customer_id: str | None
    status: str  # pending (first try or retrying), delivered, failed (retries used up)
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


_ENDPOINT_COLUMNS = (
    "id, url, description, event_types, enabled, disabled_reason, consecutive_failures, created_at, updated_at"
)
_DELIVERY_COLUMNS = (
    "d.id, d.endpoint_id, d.event_id, d.event_seq, e.type AS event_type, d.customer_id, d.status, d.attempts,"
    " CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at, d.last_attempt_at,"
    " d.last_status_code, d.last_error, d.delivered_at, d.created_at"
)
_DELIVERY_FROM = "webhook_deliveries d JOIN events e ON e.program_id = d.program_id AND e.seq = d.event_seq"


def _endpoint(row: asyncpg.Record | None, endpoint_id: str) -> Endpoint:
    if row is None:
        raise NotFound(f"webhook endpoint {endpoint_id} not found", field="endpoint_id")
    return msgspec.convert(dict(row), Endpoint)


def _delivery(row: asyncpg.Record) -> Delivery:
    return msgspec.convert(dict(row), Delivery)


def destination_policy(settings: Settings) -> DestinationPolicy:
    """Where this deployment lets webhooks go (LOYALTY_WEBHOOK_ALLOW_PRIVATE, _HTTPS_ONLY)."""
    return DestinationPolicy(allow_private=settings.webhook_allow_private, https_only=settings.webhook_https_only)


def check_url(url: str, policy: DestinationPolicy) -> None:
    """An http(s) URL with a host and no user info, whose IP-literal host is allowed."""
    problem = url_problem(url, policy)
    if problem is not None:
        raise InvalidInput(problem, field="url")


def _unique_types(types: list[EventType]) -> list[str]:
    return sorted({event_type.value for event_type in types})


async def create_endpoint(
    program_id: str,
    url: str,
    event_types: list[EventType],
    description: str,
    clock: Clock,
    policy: DestinationPolicy = PUBLIC_ONLY,
    key: str | None = None,
) -> NewEndpoint:
    """Register an endpoint for these event types; it gets events published from now on.
    Its host name is not resolved here (answers change): the dispatcher checks every send.
    With an idempotency key, once per key: a retry answers the endpoint made first, with its
    secret (kept in plain text anyway, to sign deliveries), as a retried rotation does."""
    check_url(url, policy)
    types = _unique_types(event_types)
    secret = new_secret()

    async def work(connection: asyncpg.Connection) -> NewEndpoint:
        # one create per program at a time, so two concurrent ones cannot both pass the count
        await connection.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('webhook-endpoints:' || $1, 0))", program_id
        )
        count = await connection.fetchval("SELECT count(*) FROM webhook_endpoints WHERE program_id = $1", program_id)
        if count >= MAX_ENDPOINTS:
            raise TooManyEndpoints(
                f"the program has {count} webhook endpoints, the most it may have ({MAX_ENDPOINTS});"
                " delete one to register another",
                field="url",
                limit=MAX_ENDPOINTS,
            )
        now = clock.now()
        row = await connection.fetchrow(
            f"INSERT INTO webhook_endpoints (program_id, id, url, description, event_types, secret,"
            f" created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING {_ENDPOINT_COLUMNS}",
            program_id,
            new_id("whe", int(now.timestamp() * 1000)),
            url,
            description,
            types,
            secret,
            now,
        )
        return NewEndpoint(endpoint=_endpoint(row, ""), secret=secret)

    request = [url, types, description]
    return await run_once_if_keyed(
        program_id, key, lambda: fingerprint("create-webhook-endpoint", request), NewEndpoint, work
    )


async def list_endpoints(program_id: str) -> list[Endpoint]:
    """Every endpoint of the program, oldest first (without secrets)."""
    rows = await in_transaction(
        lambda connection: connection.fetch(
            f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE program_id = $1 ORDER BY id", program_id
        )
    )
    return [_endpoint(row, "") for row in rows]


async def get_endpoint(program_id: str, endpoint_id: str) -> Endpoint:
    row = await in_transaction(
        lambda connection: connection.fetchrow(
            f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE program_id = $1 AND id = $2",
            program_id,
            endpoint_id,
        )
    )
    return _endpoint(row, endpoint_id)


async def update_endpoint(
    program_id: str,
    endpoint_id: str,
    change: EndpointChange,
    clock: Clock,
    policy: DestinationPolicy = PUBLIC_ONLY,
) -> Endpoint:
    """Change the URL, description or event types, or enable/disable; enabling clears the
    failure count and the reason, and the endpoint's pending deliveries resume at once, each
    with a fresh retry period."""
    if change.url is not msgspec.UNSET:
        check_url(change.url, policy)
    values: dict[str, Any] = {}
    if change.url is not msgspec.UNSET:
        values["url"] = change.url
    if change.description is not msgspec.UNSET:
        values["description"] = change.description
    if change.event_types is not msgspec.UNSET:
        values["event_types"] = _unique_types(change.event_types)
    if change.enabled is True:
        values |= {"enabled": True, "disabled_reason": None, "consecutive_failures": 0}
    elif change.enabled is False:
        values |= {"enabled": False, "disabled_reason": "disabled by an admin"}

    async def work(connection: asyncpg.Connection) -> Endpoint:
        now = clock.now()
        if change.enabled is True:
            # a delivery waiting while its endpoint was disabled may be past its retry period:
            # enabled again, its deliveries resume at once with a fresh one (as a redelivery
            # gets), or the first failure would give each up after a single attempt
            await connection.execute(
                "UPDATE webhook_deliveries d SET retry_from = $3, next_attempt_at = least(d.next_attempt_at, $3),"
                " updated_at = $3 FROM webhook_endpoints w"
                " WHERE w.program_id = $1 AND w.id = $2 AND NOT w.enabled"
                " AND d.program_id = $1 AND d.endpoint_id = $2 AND d.status = 'pending'",
                program_id,
                endpoint_id,
                now,
            )
        names = list(values)
        assignments = ", ".join(f"{name} = ${index}" for index, name in enumerate(names, start=3))
        # updated_at moves only with a value, so the same change again answers and stores the same
        changed = " OR ".join(f"{name} IS DISTINCT FROM ${index}" for index, name in enumerate(names, start=3))
        row = await connection.fetchrow(
            f"UPDATE webhook_endpoints SET {assignments}{', ' if names else ''}"
            f"updated_at = CASE WHEN {changed or 'false'} THEN ${len(names) + 3} ELSE updated_at END"
            f" WHERE program_id = $1 AND id = $2 RETURNING {_ENDPOINT_COLUMNS}",
            program_id,
            endpoint_id,
            *values.values(),
            now,
        )
        return _endpoint(row, endpoint_id)

    return await in_transaction(work)


async def delete_endpoint(program_id: str, endpoint_id: str) -> None:
    """Remove an endpoint and its delivery log; nothing more is sent to it."""

    async def work(connection: asyncpg.Connection) -> None:
        deleted = await connection.fetchval(
            "DELETE FROM webhook_endpoints WHERE program_id = $1 AND id = $2 RETURNING id", program_id, endpoint_id
        )
        if deleted is None:
            raise NotFound(f"webhook endpoint {endpoint_id} not found", field="endpoint_id")

    await in_transaction(work)


async def rotate_secret(
    program_id: str, endpoint_id: str, previous_valid_for_s: int, key: str, clock: Clock
) -> RotatedSecret:
    """Give the endpoint a new secret, keeping the current one valid for `previous_valid_for_s`
    seconds (it replaces any previous one still in its grace period); once per idempotency key."""
    request = fingerprint("rotate-webhook-secret", [endpoint_id, previous_valid_for_s])

    async def work(connection: asyncpg.Connection) -> RotatedSecret:
        now = clock.now()
        current = await connection.fetchval(
            "SELECT secret FROM webhook_endpoints WHERE program_id = $1 AND id = $2 FOR UPDATE",
            program_id,
            endpoint_id,
        )
        if current is None:
            raise NotFound(f"webhook endpoint {endpoint_id} not found", field="endpoint_id")
        rotation = rotate(current, previous_valid_for_s, now)
        await connection.execute(
            "UPDATE webhook_endpoints SET secret = $3, previous_secret = $4, previous_secret_until = $5,"
            " updated_at = $6 WHERE program_id = $1 AND id = $2",
            program_id,
            endpoint_id,
            rotation.secret,
            rotation.previous_secret,
            rotation.previous_secret_until,
            now,
        )
        return RotatedSecret(
            endpoint_id=endpoint_id,
            secret=rotation.secret,
            previous_secret_expires_at=rotation.previous_secret_until,
            rotated_at=now,
        )

    return await run_once(program_id, key, request, RotatedSecret, work)


def _parse_seq_cursor(cursor: str | None, field: str) -> int | None:
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18:  # "²" is a digit int() refuses
        raise InvalidInput(f"{field} is not a cursor this list returned", field=field)
    return int(cursor)


async def list_deliveries(
    program_id: str, endpoint_id: str, limit: int, cursor: str | None, status: str | None
) -> tuple[list[Delivery], str | None]:
    """An endpoint's deliveries, newest event first, a page at a time."""
    before = _parse_seq_cursor(cursor, "cursor")

    async def work(connection: asyncpg.Connection) -> tuple[list[Delivery], str | None]:
        await get_endpoint_in(connection, program_id, endpoint_id)
        rows = await connection.fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM {_DELIVERY_FROM}"
            f" WHERE d.program_id = $1 AND d.endpoint_id = $2 AND ($3::bigint IS NULL OR d.event_seq < $3)"
            f" AND ($4::text IS NULL OR d.status = $4) ORDER BY d.event_seq DESC LIMIT $5",
            program_id,
            endpoint_id,
            before,
            status,
            limit + 1,
        )
        page = [_delivery(row) for row in rows[:limit]]
        return page, (str(page[-1].event_seq) if len(rows) > limit else None)

    return await in_transaction(work)


async def get_endpoint_in(connection: asyncpg.Connection, program_id: str, endpoint_id: str) -> None:
    found = await connection.fetchval(
        "SELECT true FROM webhook_endpoints WHERE program_id = $1 AND id = $2", program_id, endpoint_id
    )
    if not found:
        raise NotFound(f"webhook endpoint {endpoint_id} not found", field="endpoint_id")


async def redeliver(program_id: str, endpoint_id: str, delivery_id: str, clock: Clock) -> Delivery:
    """Send a delivery again as soon as the dispatcher runs, with a fresh retry period
    (delivered, failed, or waiting for a retry); one being sent right now is a conflict."""

    async def work(connection: asyncpg.Connection) -> Delivery:
        now = clock.now()
        row = await connection.fetchrow(
            "SELECT status, claimed_until FROM webhook_deliveries"
            " WHERE program_id = $1 AND endpoint_id = $2 AND id = $3 FOR UPDATE",
            program_id,
            endpoint_id,
            delivery_id,
        )
        if row is None:
            raise NotFound(f"delivery {delivery_id} not found", field="delivery_id")
        if row["status"] == "pending" and row["claimed_until"] is not None and row["claimed_until"] > now:
            raise Conflict(f"delivery {delivery_id} is being sent right now", field="delivery_id")
        await connection.execute(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $4, retry_from = $4,"
            " claimed_until = NULL, claim = NULL, updated_at = $4"
            " WHERE program_id = $1 AND endpoint_id = $2 AND id = $3",
            program_id,
            endpoint_id,
            delivery_id,
            now,
        )
        delivered = await connection.fetchrow(
            f"SELECT {_DELIVERY_COLUMNS} FROM {_DELIVERY_FROM} WHERE d.program_id = $1 AND d.id = $2",
            program_id,
            delivery_id,
        )
        assert delivered is not None
        return _delivery(delivered)

    return await in_transaction(work)


async def event_feed(
    program_id: str, after: str | None, limit: int, types: list[EventType] | None
) -> tuple[list[AnyEvent], str]:
    """Published events after the cursor, oldest first, and the cursor to continue from
    (never null: poll again with it to get what is published next)."""
    start = _parse_seq_cursor(after, "after") or 0
    names = _unique_types(types) if types else None
    events, covered = await in_transaction(
        lambda connection: event_rows.feed(connection, program_id, start, limit, names)
    )
    return events, str(covered)
