"""Orders and refunds: their rows, and the customer balances their entries depend on."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from service.db.job_failures import not_waiting
from service.db.tiers import Window
from service.domain.earning import Refund
from service.domain.errors import NotFound
from service.domain.ledger import AccountKind, Unit, customer_account
from service.domain.orders import RedemptionHold, ReturnPolicy, ReturnSettings


async def lock_customer_balances(
    connection: asyncpg.Connection, program_id: str, customer_id: str, kinds: Sequence[AccountKind]
) -> dict[AccountKind, int]:
    """Lock the customer's accounts of these kinds (in id order, as the ledger writer does)
    and return their balances; NotFound if the customer has none."""
    rows = await connection.fetch(
        "SELECT kind, balance FROM accounts WHERE program_id = $1 AND code = ANY($2::text[])"
        " ORDER BY id FOR NO KEY UPDATE",
        program_id,
        [customer_account(customer_id, kind).code for kind in kinds],
    )
    if len(rows) != len(kinds):
        raise NotFound(f"customer {customer_id} not found", field="customer_id")
    return {AccountKind(row["kind"]): row["balance"] for row in rows}


async def return_settings(connection: asyncpg.Connection, program_id: str) -> ReturnSettings:
    row = await connection.fetchrow("SELECT return_window_days, return_policy FROM programs WHERE id = $1", program_id)
    if row is None:
        raise NotFound(f"program {program_id} not found")
    return returns_from_row(row)


def returns_from_row(row: asyncpg.Record) -> ReturnSettings:
    """The return settings in a row of `programs`."""
    return ReturnSettings(window_days=row["return_window_days"], policy=ReturnPolicy(row["return_policy"]))


async def save_return_settings(connection: asyncpg.Connection, program_id: str, settings: ReturnSettings) -> None:
    await connection.execute(
        "UPDATE programs SET return_window_days = $2, return_policy = $3 WHERE id = $1",
        program_id,
        settings.window_days,
        settings.policy.value,
    )


async def order_context(connection: asyncpg.Connection, program_id: str, shop_id: str) -> asyncpg.Record:
    """In one statement, what placing an order at a shop reads of the program: the shop's
    `name`, the ledger settings (see `settings_from_row`) and the return settings
    (`returns_from_row`); NotFound without the shop."""
    row: asyncpg.Record | None = await connection.fetchrow(
        "SELECT s.name, p.time_zone, p.expiry_policy, p.expiry_period, p.return_window_days, p.return_policy"
        " FROM programs p JOIN shops s ON s.program_id = p.id AND s.id = $2 WHERE p.id = $1",
        program_id,
        shop_id,
    )
    if row is None:
        raise NotFound(f"shop {shop_id} not found", field="shop_id")
    return row


async def order_inputs(
    connection: asyncpg.Connection,
    program_id: str,
    shop_id: str,
    customer_id: str,
    placed_at: datetime,
    now: datetime,
) -> asyncpg.Record:
    """In one call (migration 0020), what placing an order reads before computing its award,
    the customer's pending account and tier and pending referral locked first: the shop's
    `shop_name`, the ledger and return settings (`settings_from_row`, `returns_from_row`),
    `rules` in force at `placed_at` (NULL if none), `campaign_bonus` (the bonus each campaign
    gave the customer and they kept, read only if a campaign of those rules has a customer
    cap), `tier_config`, the customer's tier row as `tier_earned_code` (NULL without one),
    `tier_effective_code`, `tier_since`, `tier_review_at` and `tier_grace_ends_at`,
    `tier_grant_codes` of the grants not ended at `now`, `referral_id` (the customer's pending
    referral) and `referral_settings`. NotFound without the shop or the customer."""
    row: asyncpg.Record | None = await connection.fetchrow(
        "SELECT * FROM order_inputs($1, $2, $3, $4, $5, $6)",
        program_id,
        shop_id,
        customer_id,
        customer_account(customer_id, AccountKind.PENDING).code,
        placed_at,
        now,
    )
    assert row is not None  # the function returns one row
    if row["shop_name"] is None:
        raise NotFound(f"shop {shop_id} not found", field="shop_id")
    if not row["customer_found"]:
        raise NotFound(f"customer {customer_id} not found", field="customer_id")
    return row


async def shop_name(connection: asyncpg.Connection, program_id: str, shop_id: str) -> str:
    name: str | None = await connection.fetchval(
        "SELECT name FROM shops WHERE program_id = $1 AND id = $2", program_id, shop_id
    )
    if name is None:
        raise NotFound(f"shop {shop_id} not found", field="shop_id")
    return name


ORDER_COLUMNS = (
    "shop_id, id, customer_id, currency, placed_at, lines, net, points, award, award_entry_id, release_at,"
    " released_at, release_entry_id, refunded_net, clawed_back, created_at,"
    " redemption_hold_id, redemption_unit, points_redeemed, points_returned"
)


# The lifecycle row a customer's order creates: this order alone, unless the customer has
# orders the rollup never counted (stored by an instance older than migration 0018 during a
# rolling deploy): then those too, so `purchase.first` is never told twice. The history is
# read only when there is no row (CASE evaluates the branch taken), and the order the
# statement inserts is not in its snapshot.
_EARLIER = "FROM orders h WHERE h.program_id = $1 AND h.customer_id = o.customer_id"
_EARLIER_LINES = (
    "FROM orders h CROSS JOIN LATERAL jsonb_array_elements(h.lines) AS line"
    " WHERE h.program_id = $1 AND h.customer_id = o.customer_id"
)
_FIRST_ROW = (
    f"CASE WHEN cur.customer_id IS NULL THEN greatest(o.placed_at, (SELECT max(h.placed_at) {_EARLIER}))"
    " ELSE o.placed_at END,"
    f" CASE WHEN cur.customer_id IS NULL THEN 1 + (SELECT count(*) {_EARLIER})::integer ELSE 1 END,"
    " CASE WHEN cur.customer_id IS NULL AND $17::text IS NOT NULL THEN"
    f" (SELECT CASE WHEN bool_and(line ->> 'category' = $17) IS NOT FALSE THEN $17 END {_EARLIER_LINES})"
    " ELSE $17 END"
)


async def insert_order(
    connection: asyncpg.Connection, program_id: str, values: dict[str, Any], tier_window: Window | None
) -> asyncpg.Record:
    """Store an order (with the hold that paid for it, if any: `redemption_hold_id`,
    `redemption_unit`, `points_redeemed`) and, in the same statement, count it in the
    customer's lifecycle rollup (migration 0018: last order, orders, the one category of all
    their lines or NULL). The row
    has the order's columns, `customer_orders` (the customer's orders, this one included) and
    `tier_measure`: the customer's measure over `tier_window`, this order included (NULL
    without a window). The statement's snapshot does not hold the order it inserts, so the
    order's own share is added to the sum of the others."""
    categories = {line.category for line in values["lines"]}
    measure = "NULL::bigint"
    if tier_window is not None:
        since = "($18::timestamptz IS NULL OR {}.placed_at >= $18)"
        measure = (
            f"(SELECT coalesce(sum({tier_window.value('h')}), 0) {_EARLIER} AND {since.format('h')})"
            f" + CASE WHEN {since.format('o')} THEN {tier_window.value('o')} ELSE 0 END"
        )
    row = await connection.fetchrow(
        f"WITH o AS (INSERT INTO orders (program_id, {ORDER_COLUMNS}) VALUES"
        f" ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL, NULL, 0, 0, $13, $14, $15, $16, 0)"
        f" RETURNING {ORDER_COLUMNS}),"
        " lifecycle AS (INSERT INTO customer_lifecycle AS l (program_id, customer_id, last_order_at, orders, category)"
        f" SELECT $1, o.customer_id, {_FIRST_ROW} FROM o LEFT JOIN customer_lifecycle AS cur"
        " ON cur.program_id = $1 AND cur.customer_id = o.customer_id"
        " ON CONFLICT (program_id, customer_id) DO UPDATE SET"
        " last_order_at = greatest(l.last_order_at, EXCLUDED.last_order_at), orders = l.orders + 1,"
        " category = CASE WHEN l.category = EXCLUDED.category THEN l.category END RETURNING l.orders)"
        f" SELECT {ORDER_COLUMNS}, (SELECT orders FROM lifecycle) AS customer_orders,"
        f" ({measure})::bigint AS tier_measure FROM o",
        program_id,
        values["shop_id"],
        values["id"],
        values["customer_id"],
        values["currency"],
        values["placed_at"],
        msgspec.json.encode(values["lines"]).decode(),
        values["net"],
        values["points"],
        msgspec.json.encode(values["award"]).decode(),
        values["award_entry_id"],
        values["release_at"],
        values["created_at"],
        values["redemption_hold_id"],
        values["redemption_unit"],
        values["points_redeemed"],
        next(iter(categories)) if len(categories) == 1 else None,
        *(() if tier_window is None else (tier_window.since,)),
    )
    assert row is not None
    return row


async def load_order(
    connection: asyncpg.Connection, program_id: str, shop_id: str, order_id: str, *, for_update: bool = False
) -> asyncpg.Record:
    row = await connection.fetchrow(
        f"SELECT {ORDER_COLUMNS} FROM orders WHERE program_id = $1 AND shop_id = $2 AND id = $3"
        + (" FOR UPDATE" if for_update else ""),
        program_id,
        shop_id,
        order_id,
    )
    if row is None:
        raise NotFound(f"order {order_id} of shop {shop_id} not found", field="order_id")
    return row


async def pending_of_order(
    connection: asyncpg.Connection, program_id: str, customer_id: str, award_entry_id: int | None
) -> int:
    """The points of an order's award still pending: what is left of the lots it created
    (read through the customer's open pending lots: no index leads with the entry)."""
    if award_entry_id is None:
        return 0
    left: int = await connection.fetchval(
        "SELECT coalesce(sum(remaining), 0)::bigint FROM lots WHERE program_id = $1 AND remaining > 0"
        " AND entry_id = $3"
        " AND account_id = (SELECT id FROM accounts WHERE program_id = $1 AND customer_id = $2 AND kind = 'pending')",
        program_id,
        customer_id,
        award_entry_id,
    )
    return left


async def mark_released(
    connection: asyncpg.Connection,
    program_id: str,
    shop_id: str,
    order_id: str,
    released_at: datetime,
    entry_id: int | None,
) -> None:
    await connection.execute(
        "UPDATE orders SET released_at = $4, release_entry_id = $5 WHERE program_id = $1 AND shop_id = $2 AND id = $3",
        program_id,
        shop_id,
        order_id,
        released_at,
        entry_id,
    )


REFUND_COLUMNS = (
    "id, request, refunded_net, points, from_pending, from_available, owed, forgiven, entry_id, created_at,"
    " points_returned, return_entry_id, return_settled"
)


async def refunds_of(
    connection: asyncpg.Connection, program_id: str, shop_id: str, order_id: str
) -> list[asyncpg.Record]:
    """The order's refunds in the order they were made."""
    return list(
        await connection.fetch(
            f"SELECT {REFUND_COLUMNS} FROM refunds WHERE program_id = $1 AND shop_id = $2 AND order_id = $3"
            " ORDER BY created_at, id",
            program_id,
            shop_id,
            order_id,
        )
    )


def refund_request(row: asyncpg.Record) -> Refund:
    return msgspec.json.decode(row["request"], type=Refund)


async def insert_refund(
    connection: asyncpg.Connection, program_id: str, shop_id: str, order_id: str, values: dict[str, Any]
) -> asyncpg.Record:
    row = await connection.fetchrow(
        f"INSERT INTO refunds (program_id, shop_id, order_id, {REFUND_COLUMNS})"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) RETURNING {REFUND_COLUMNS}",
        program_id,
        shop_id,
        order_id,
        values["id"],
        msgspec.json.encode(values["request"]).decode(),
        values["refunded_net"],
        values["points"],
        values["from_pending"],
        values["from_available"],
        values["owed"],
        values["forgiven"],
        values["entry_id"],
        values["created_at"],
        values["points_returned"],
        values["return_entry_id"],
        values["return_settled"],
    )
    assert row is not None
    return row


async def record_refund_on_order(
    connection: asyncpg.Connection,
    program_id: str,
    shop_id: str,
    order_id: str,
    refunded_net: int,
    points: int,
    points_returned: int = 0,
) -> None:
    await connection.execute(
        "UPDATE orders SET refunded_net = $4, clawed_back = clawed_back + $5, points_returned = points_returned + $6"
        " WHERE program_id = $1 AND shop_id = $2 AND id = $3",
        program_id,
        shop_id,
        order_id,
        refunded_net,
        points,
        points_returned,
    )


async def redemption_hold(
    connection: asyncpg.Connection, program_id: str, hold_id: str
) -> tuple[RedemptionHold | None, str | None]:
    """The hold an order names as what paid for it, locked, and the order it already pays
    for, if any (`order <id> of shop <id>`); (None, None) without the hold. Orders naming one
    hold take turns on its lock, and the order is looked up by a statement of its own, after
    the lock (a fresh snapshot under READ COMMITTED): so the second sees the first."""
    row = await connection.fetchrow(
        "SELECT id, customer_id, unit, status, captured, expires_at, resolve_entry_id FROM holds"
        " WHERE program_id = $1 AND id = $2 FOR NO KEY UPDATE",
        program_id,
        hold_id,
    )
    if row is None:
        return None, None
    paid_for: str | None = await connection.fetchval(
        "SELECT 'order ' || id || ' of shop ' || shop_id FROM orders WHERE program_id = $1 AND redemption_hold_id = $2",
        program_id,
        hold_id,
    )
    hold = RedemptionHold(
        id=row["id"],
        customer_id=row["customer_id"],
        unit=Unit(row["unit"]),
        status=row["status"],
        captured=row["captured"],
        expires_at=row["expires_at"],
        resolve_entry_id=row["resolve_entry_id"],
    )
    return hold, paid_for


async def capture_entry_of(connection: asyncpg.Connection, program_id: str, hold_id: str) -> int:
    """The entry that captured a hold (its lot allocations are the points the capture spent)."""
    entry_id: int | None = await connection.fetchval(
        "SELECT resolve_entry_id FROM holds WHERE program_id = $1 AND id = $2 AND status = 'captured'",
        program_id,
        hold_id,
    )
    assert entry_id is not None, f"hold {hold_id} paid for an order, so it was captured"
    return entry_id


def order_item(order: asyncpg.Record) -> str:
    """An order as an item of a job (`job_failures`): its shop and its id (shop ids have no `/`)."""
    return f"{order['shop_id']}/{order['id']}"


async def due_order(
    connection: asyncpg.Connection, program_id: str, now: datetime, job: str, skip: Sequence[str]
) -> asyncpg.Record | None:
    """Claim one order whose return window has ended (skipping those another worker holds,
    those waiting for a retry of `job` after a failure, and those in `skip`, by `order_item`)."""
    item = "(orders.shop_id || '/' || orders.id)"
    row: asyncpg.Record | None = await connection.fetchrow(
        f"SELECT {ORDER_COLUMNS} FROM orders WHERE program_id = $1 AND released_at IS NULL AND release_at <= $2"
        f" AND {not_waiting('$3', '$2', item)} AND {item} <> ALL($4::text[])"
        " ORDER BY release_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        program_id,
        now,
        job,
        list(skip),
    )
    return row
