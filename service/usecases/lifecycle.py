"""Lifecycle jobs: events that come from the passing of time rather than from a request
(points expiring soon, win-back due, cross-sell opportunity). Each is emitted once per key,
recorded in `event_marks` in the transaction that emits it, so reruns and concurrent
workers never emit it twice.

The scans read the program's lots and orders on every run; with rollups of customer
activity (planned) they would read those instead.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
import msgspec

from service.config import Settings
from service.db.events import emit, emit_all, emit_once
from service.db.transaction import in_transaction
from service.domain.clock import Clock
from service.domain.events import (
    CrossSellOpportunity,
    EventType,
    PointsEarned,
    PointsExpired,
    PointsExpiringSoon,
    PointsRedeemed,
    Purchase,
    WinBackDue,
)


class LifecycleRules(msgspec.Struct, frozen=True, kw_only=True):
    expiring_soon_days: int = 7
    win_back_days: int = 60
    cross_sell_orders: int = 3


BATCH = 1000


async def points_expiring_soon(program_id: str, clock: Clock, rules: LifecycleRules) -> int:
    """Warn once per customer and last valid day about available points that expire within
    `expiring_soon_days`; returns how many events were emitted."""
    now = clock.now()

    async def work(connection: asyncpg.Connection) -> int:
        rows = await connection.fetch(
            "SELECT * FROM ("
            "  SELECT a.customer_id, (l.expires_at AT TIME ZONE p.time_zone - interval '1 microsecond')::date"
            "   AS last_day, min(l.expires_at) AS expires_at, sum(l.remaining)::bigint AS points"
            "  FROM lots l JOIN accounts a ON a.program_id = l.program_id AND a.id = l.account_id"
            "  JOIN programs p ON p.id = l.program_id"
            "  WHERE l.program_id = $1 AND a.kind = 'available' AND l.remaining > 0"
            "  AND l.expires_at > $2 AND l.expires_at <= $3 GROUP BY 1, 2) due"
            " WHERE NOT EXISTS (SELECT FROM event_marks m WHERE m.program_id = $1"
            "  AND m.key = 'expiring:' || due.customer_id || ':' || due.last_day::text)"
            " ORDER BY due.expires_at LIMIT $4",
            program_id,
            now,
            now + timedelta(days=rules.expiring_soon_days),
            BATCH,
        )
        emitted = 0
        for row in rows:
            payload = PointsExpiringSoon(
                customer_id=row["customer_id"],
                points=row["points"],
                last_day=row["last_day"],
                expires_at=row["expires_at"],
            )
            key = f"expiring:{row['customer_id']}:{row['last_day'].isoformat()}"
            kind = EventType.POINTS_EXPIRING_SOON
            emitted += await emit_once(connection, program_id, key, kind, payload, row["customer_id"], occurred_at=now)
        return emitted

    return await in_transaction(work)


async def win_back_due(program_id: str, clock: Clock, rules: LifecycleRules) -> int:
    """Emit `customer.win_back_due` once per lapse: for a customer whose last order is at
    least `win_back_days` old (a new order and a new lapse emit it again)."""
    now = clock.now()

    async def work(connection: asyncpg.Connection) -> int:
        rows = await connection.fetch(
            "SELECT * FROM ("
            "  SELECT customer_id, max(placed_at) AS last_order_at, count(*) AS orders,"
            "   'win_back:' || customer_id || ':' || (extract(epoch FROM max(placed_at)) * 1000000)::bigint AS key"
            "  FROM orders WHERE program_id = $1 GROUP BY customer_id HAVING max(placed_at) <= $2) lapsed"
            " WHERE NOT EXISTS (SELECT FROM event_marks m WHERE m.program_id = $1 AND m.key = lapsed.key)"
            " ORDER BY lapsed.last_order_at LIMIT $3",
            program_id,
            now - timedelta(days=rules.win_back_days),
            BATCH,
        )
        emitted = 0
        for row in rows:
            payload = WinBackDue(
                customer_id=row["customer_id"],
                last_order_at=row["last_order_at"],
                days_since_last_order=(now - row["last_order_at"]).days,
                orders=row["orders"],
            )
            kind = EventType.WIN_BACK_DUE
            emitted += await emit_once(
                connection, program_id, row["key"], kind, payload, row["customer_id"], occurred_at=now
            )
        return emitted

    return await in_transaction(work)


async def cross_sell_opportunities(program_id: str, clock: Clock, rules: LifecycleRules) -> int:
    """Emit `customer.cross_sell_opportunity` once per customer who has placed at least
    `cross_sell_orders` orders, every line of them in one category."""
    now = clock.now()

    async def work(connection: asyncpg.Connection) -> int:
        rows = await connection.fetch(
            "SELECT * FROM ("
            "  SELECT o.customer_id, count(DISTINCT o.shop_id || '/' || o.id) AS orders,"
            "   min(line ->> 'category') AS category"
            "  FROM orders o CROSS JOIN LATERAL jsonb_array_elements(o.lines) AS line"
            "  WHERE o.program_id = $1 GROUP BY o.customer_id"
            "  HAVING count(DISTINCT o.shop_id || '/' || o.id) >= $2 AND count(DISTINCT line ->> 'category') = 1"
            " ) single"
            " WHERE NOT EXISTS (SELECT FROM event_marks m WHERE m.program_id = $1"
            "  AND m.key = 'cross_sell:' || single.customer_id)"
            " LIMIT $3",
            program_id,
            rules.cross_sell_orders,
            BATCH,
        )
        emitted = 0
        for row in rows:
            payload = CrossSellOpportunity(
                customer_id=row["customer_id"], category=row["category"], orders=row["orders"]
            )
            key = f"cross_sell:{row['customer_id']}"
            kind = EventType.CROSS_SELL_OPPORTUNITY
            emitted += await emit_once(connection, program_id, key, kind, payload, row["customer_id"], occurred_at=now)
        return emitted

    return await in_transaction(work)


async def run_lifecycle_jobs(program_id: str, clock: Clock, rules: LifecycleRules) -> int:
    """Every lifecycle job for one program; returns how many events they emitted."""
    return (
        await points_expiring_soon(program_id, clock, rules)
        + await win_back_due(program_id, clock, rules)
        + await cross_sell_opportunities(program_id, clock, rules)
    )


async def emit_order_events(
    connection: asyncpg.Connection, program_id: str, order: asyncpg.Record, expiry: datetime | None
) -> None:
    """In the transaction that stores an order: `purchase.first` or `purchase.repeat` (by
    whether the customer had an order before; their orders take turns on a lock), and
    `points.earned` when it earned points."""
    customer_id = order["customer_id"]
    count = await connection.fetchval(
        "SELECT count(*) FROM orders WHERE program_id = $1 AND customer_id = $2", program_id, customer_id
    )
    lines = msgspec.json.decode(order["lines"])
    purchase = Purchase(
        customer_id=customer_id,
        shop_id=order["shop_id"],
        order_id=order["id"],
        order_number=count,
        placed_at=order["placed_at"],
        currency=order["currency"],
        net=order["net"],
        points=order["points"],
        categories=sorted({line["category"] for line in lines}),
    )
    kind = EventType.PURCHASE_FIRST if count == 1 else EventType.PURCHASE_REPEAT
    events: list[tuple[EventType, msgspec.Struct]] = [(kind, purchase)]
    if order["award_entry_id"] is not None:
        earned = PointsEarned(
            customer_id=customer_id,
            points=order["points"],
            source="order",
            shop_id=order["shop_id"],
            order_id=order["id"],
            entry_id=order["award_entry_id"],
            available_from=order["release_at"],
            expires_at=expiry,
        )
        events.append((EventType.POINTS_EARNED, earned))
    await emit_all(connection, program_id, events, customer_id, occurred_at=order["created_at"])


async def emit_points_redeemed(
    connection: asyncpg.Connection,
    program_id: str,
    hold_id: str,
    customer_id: str,
    points: int,
    entry_id: int,
    reference: str | None,
    occurred_at: datetime,
) -> None:
    """In the transaction that captures a hold of points for more than zero (`reference`: the
    hold's, as its client gave it)."""
    redeemed = PointsRedeemed(
        customer_id=customer_id, points=points, hold_id=hold_id, entry_id=entry_id, reference=reference
    )
    await emit(connection, program_id, EventType.POINTS_REDEEMED, redeemed, customer_id, occurred_at=occurred_at)


async def emit_points_expired(
    connection: asyncpg.Connection, program_id: str, customer_id: str, points: int, entry_id: int, occurred_at: datetime
) -> None:
    """In the transaction of a customer's expiry entry."""
    expired = PointsExpired(customer_id=customer_id, points=points, entry_id=entry_id)
    await emit(connection, program_id, EventType.POINTS_EXPIRED, expired, customer_id, occurred_at=occurred_at)


def lifecycle_rules(settings: Settings) -> LifecycleRules:
    """The lifecycle jobs' knobs from the settings."""
    return LifecycleRules(
        expiring_soon_days=settings.expiring_soon_days,
        win_back_days=settings.win_back_days,
        cross_sell_orders=settings.cross_sell_orders,
    )
