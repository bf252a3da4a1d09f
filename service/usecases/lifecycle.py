"""Lifecycle jobs: events that come from the passing of time rather than from a request
(points expiring soon, win-back due, cross-sell opportunity). Each is emitted once per key,
recorded in `event_marks` in the transaction that emits it, so reruns and concurrent
workers never emit it twice.

A round reads what is due, not the program's history. Points expiring soon are read by
expiry date (`lots_expiring`, the lots of the next `expiring_soon_days`). Win-back and
cross-sell read the lifecycle rollup `customer_lifecycle` (migration 0018): one row per
customer with an order (last order instant, order count, the one category of all their
lines or NULL), written by the statement that stores the order, so it is exactly what
grouping the orders gave, at every commit. Each row also says which event has been
emitted for it (`win_back_emitted_for`: the last order whose lapse was told;
`cross_sell_emitted`), set by the job in the transaction that emits, and the jobs read
partial indexes that hold only the rows still owed an event: a round of win-back reads
the customers whose last order is at or before the cutoff and whose lapse was not told
(the active customers sit above the cutoff, the told ones left the index), a round of
cross-sell the single-category customers with enough orders and no event yet.

Days are the program's local days, not 24-hour periods (`service.domain.lifecycle`): the
win-back cutoff is the last instant of the local day `win_back_days` before today, and the
expiring-soon window ends at the local midnight `expiring_soon_days` days ahead, whatever
clock changes fall between.

Why not a watermark ("customers whose last order crossed the cutoff since the last
round") or a look-back window below the cutoff: an order that commits late, a backdated
order (imports carry old `placed_at`), a round skipped while the jobs were down or a
changed `win_back_days` would put a due customer below the window for good. The
emitted-markers need no assumption about commit order or timing: a row is read until its
event is out, however it got due. The markers only keep rows out of the index:
`event_marks`, under the keys the jobs always used, still decides whether an event is
emitted (a key already marked, by an earlier version or a concurrent worker, emits
nothing, and its row is marked anyway so that it leaves the index).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime

import asyncpg
import msgspec

from service.config import Settings
from service.db import job_failures
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
    PointsReturned,
    Purchase,
    WinBackDue,
)
from service.domain.lifecycle import expiring_soon_until, local_days_between, win_back_cutoff
from service.usecases.ledger_settings import ledger_settings


class LifecycleRules(msgspec.Struct, frozen=True, kw_only=True):
    expiring_soon_days: int = 7
    win_back_days: int = 60
    cross_sell_orders: int = 3


BATCH = 1000
# The rows of customers $2 (of program $1), locked in customer order before a job's UPDATE
# marks them told: the two jobs (on two workers) then lock shared rows in the same order.
_LOCKED_IN_ORDER = (
    "(SELECT customer_id FROM customer_lifecycle WHERE program_id = $1 AND customer_id = ANY($2::text[])"
    " ORDER BY customer_id FOR NO KEY UPDATE) AS locked"
)


async def points_expiring_soon(program_id: str, clock: Clock, rules: LifecycleRules) -> int:
    """Warn once per customer and last valid day about available points whose last valid day is
    one of the next `expiring_soon_days` local days (today the first); returns how many events
    were emitted."""
    now = clock.now()

    async def work(connection: asyncpg.Connection, careful: bool) -> _Round:
        # the lots of the window through lots_expiring, each looking up its account, and each
        # warning its mark, by key: joined freely, the plan may walk every available account of
        # the program, or every mark it ever wrote, whatever is due. The key's day is written
        # as ISO by to_char, as Python writes it, not by `::text`, which follows `datestyle`.
        # The program's zone is read by key first: joined, its row was read by a scan of every
        # program whenever the statistics called the table small
        zone = (await ledger_settings(connection, program_id)).zone
        rows = await connection.fetch(
            "WITH soon AS MATERIALIZED ("
            "  SELECT (SELECT a.customer_id FROM accounts a WHERE a.program_id = l.program_id"
            "   AND a.id = l.account_id AND a.kind = 'available') AS customer_id, l.expires_at, l.remaining"
            "  FROM lots l WHERE l.program_id = $1 AND l.remaining > 0 AND l.expires_at > $2 AND l.expires_at <= $3)"
            " SELECT * FROM ("
            "  SELECT s.customer_id, ((s.expires_at - interval '1 microsecond') AT TIME ZONE $5::text)::date"
            "   AS last_day, min(s.expires_at) AS expires_at, sum(s.remaining)::bigint AS points"
            "  FROM soon s WHERE s.customer_id IS NOT NULL GROUP BY 1, 2) due"
            " WHERE (SELECT true FROM event_marks m WHERE m.program_id = $1"
            "  AND m.key = 'expiring:' || due.customer_id || ':' || to_char(due.last_day, 'YYYY-MM-DD')) IS NULL"
            " ORDER BY due.expires_at LIMIT $4",
            program_id,
            now,
            expiring_soon_until(now, rules.expiring_soon_days, zone),
            BATCH,
            zone.key,
        )
        run = _Round(connection, program_id, EXPIRING_SOON_JOB, now, careful)
        keys = [f"expiring:{row['customer_id']}:{row['last_day'].isoformat()}" for row in rows]
        await run.start(keys)
        for row, key in zip(rows, keys, strict=True):
            payload = PointsExpiringSoon(
                customer_id=row["customer_id"],
                points=row["points"],
                last_day=row["last_day"],
                expires_at=row["expires_at"],
            )
            await run.emit(key, EventType.POINTS_EXPIRING_SOON, payload, row["customer_id"])
        return run

    return await _run_round(work)


async def win_back_due(program_id: str, clock: Clock, rules: LifecycleRules) -> int:
    """Emit `customer.win_back_due` once per lapse: for a customer whose last order was placed
    at least `win_back_days` local days before today (a new order and a new lapse emit it
    again)."""
    now = clock.now()

    async def work(connection: asyncpg.Connection, careful: bool) -> _Round:
        # the due rows whose lapse was not told, through customer_lifecycle_win_back (0018); the
        # program's zone read by key first, as for the warnings above
        zone = (await ledger_settings(connection, program_id)).zone
        rows = await connection.fetch(
            "SELECT customer_id, last_order_at, orders, key FROM lifecycle_win_back_due($1, $2, $3)",
            program_id,
            win_back_cutoff(now, rules.win_back_days, zone),
            BATCH,
        )
        run = _Round(connection, program_id, WIN_BACK_JOB, now, careful)
        await run.start([row["key"] for row in rows])
        for row in rows:
            payload = WinBackDue(
                customer_id=row["customer_id"],
                last_order_at=row["last_order_at"],
                days_since_last_order=local_days_between(row["last_order_at"], now, zone),
                orders=row["orders"],
            )
            await run.emit(row["key"], EventType.WIN_BACK_DUE, payload, row["customer_id"])
        # told (now or before): out of the index, unless an order moved the last one meanwhile;
        # a row that failed or waits for its retry stays in, to be read again
        rows = [row for row in rows if row["key"] in run.done]
        if rows:
            await connection.execute(
                "UPDATE customer_lifecycle l SET win_back_emitted_for = x.last_order_at"
                f" FROM unnest($2::text[], $3::timestamptz[]) AS x(customer_id, last_order_at), {_LOCKED_IN_ORDER}"
                " WHERE l.program_id = $1 AND l.customer_id = locked.customer_id"
                " AND l.customer_id = x.customer_id AND l.last_order_at = x.last_order_at",
                program_id,
                [row["customer_id"] for row in rows],
                [row["last_order_at"] for row in rows],
            )
        return run

    return await _run_round(work)


async def cross_sell_opportunities(program_id: str, clock: Clock, rules: LifecycleRules) -> int:
    """Emit `customer.cross_sell_opportunity` once per customer who has placed at least
    `cross_sell_orders` orders, every line of them in one category."""
    now = clock.now()

    async def work(connection: asyncpg.Connection, careful: bool) -> _Round:
        # single-category rows without the event, through customer_lifecycle_cross_sell (0018)
        rows = await connection.fetch(
            "SELECT customer_id, category, orders FROM lifecycle_cross_sell_due($1, $2, $3)",
            program_id,
            rules.cross_sell_orders,
            BATCH,
        )
        run = _Round(connection, program_id, CROSS_SELL_JOB, now, careful)
        keys = [f"cross_sell:{row['customer_id']}" for row in rows]
        await run.start(keys)
        for row, key in zip(rows, keys, strict=True):
            payload = CrossSellOpportunity(
                customer_id=row["customer_id"], category=row["category"], orders=row["orders"]
            )
            await run.emit(key, EventType.CROSS_SELL_OPPORTUNITY, payload, row["customer_id"])
        rows = [row for row, key in zip(rows, keys, strict=True) if key in run.done]
        if rows:
            await connection.execute(
                f"UPDATE customer_lifecycle l SET cross_sell_emitted = true FROM {_LOCKED_IN_ORDER}"
                " WHERE l.program_id = $1 AND l.customer_id = locked.customer_id",
                program_id,
                [row["customer_id"] for row in rows],
            )
        return run

    return await _run_round(work)


async def backfill(program_id: str) -> int:
    """Rebuild a program's lifecycle rollup from its orders and event marks (what migration
    0018 did; again after orders were stored without it); returns the customers."""
    rebuilt: int = await in_transaction(
        lambda connection: connection.fetchval("SELECT rebuild_customer_lifecycle($1)", program_id)
    )
    return rebuilt


async def run_lifecycle_jobs(program_id: str, clock: Clock, rules: LifecycleRules) -> int:
    """Every lifecycle job for one program; returns how many events they emitted. A job that
    fails does not keep the others from running; the first failure is raised once they ran."""
    emitted = 0
    first_error: Exception | None = None
    for job in (points_expiring_soon, win_back_due, cross_sell_opportunities):
        try:
            emitted += await job(program_id, clock, rules)
        except Exception as error:
            first_error = first_error or error
    if first_error is not None:
        raise first_error
    return emitted


EXPIRING_SOON_JOB = "lifecycle-expiring-soon"
WIN_BACK_JOB = "lifecycle-win-back"
CROSS_SELL_JOB = "lifecycle-cross-sell"


class _RowFailed(Exception):
    """A row of a round run without savepoints failed: the round is rolled back and run again
    row by row."""


class _Round:
    """The rows of a lifecycle round, in the round's transaction. A round first runs without
    savepoints (one savepoint per row that writes costs a subtransaction, and past 64 of them
    every other session's visibility checks go through pg_subtrans); if a row fails, the round
    is rolled back and run again `careful`ly, each row in a savepoint: a row that fails is
    rolled back alone, logged and recorded (`job_failures`, once the round has committed) and
    the others go on. A row waiting for its retry is left for a later round."""

    def __init__(self, connection: asyncpg.Connection, program_id: str, job: str, now: datetime, careful: bool) -> None:
        self.connection, self.program_id, self.job, self.now = connection, program_id, job, now
        self.careful = careful
        self.emitted = 0
        self.done: set[str] = set()
        self.failures: list[tuple[str, Exception]] = []
        self.waiting: dict[str, datetime] = {}

    async def start(self, keys: list[str]) -> None:
        """Read the round's failures on record; when the round read every row due (fewer than
        a batch), those of keys it did not read are no longer owed and go."""
        self.waiting = await job_failures.waiting(self.connection, self.program_id, self.job)
        read = set(keys)
        gone = [key for key in self.waiting if key not in read] if len(keys) < BATCH else []
        if gone:
            await job_failures.forget(self.connection, self.program_id, self.job, gone)

    async def emit(self, key: str, kind: EventType, payload: msgspec.Struct, customer_id: str) -> None:
        """The row's event, once under `key` (unless the row waits for its retry)."""
        retry_at = self.waiting.get(key)
        if retry_at is not None and retry_at > self.now:
            return
        try:
            async with self.connection.transaction() if self.careful else contextlib.nullcontext():  # a savepoint
                self.emitted += await emit_once(
                    self.connection, self.program_id, key, kind, payload, customer_id, occurred_at=self.now
                )
                if retry_at is not None:
                    await job_failures.clear(self.connection, self.program_id, self.job, key)
        except job_failures.TRANSIENT:
            raise  # not the row's: the round fails (or, on deadlock, is tried again) as a whole
        except Exception as error:
            if not self.careful:
                raise _RowFailed(key) from error
            self.failures.append((key, error))
            return
        self.done.add(key)

    async def finish(self) -> int:
        """Once the round committed: log and record its failures; returns the events emitted."""
        for key, error in self.failures:
            await job_failures.failed(self.program_id, self.job, key, error, self.now)
        return self.emitted


async def _run_round(work: Callable[[asyncpg.Connection, bool], Awaitable[_Round]]) -> int:
    """Run a round without savepoints, and again row by row if one of its rows failed."""
    try:
        done = await in_transaction(lambda connection: work(connection, False))
    except _RowFailed:
        done = await in_transaction(lambda connection: work(connection, True))
    return await done.finish()


async def emit_order_events(
    connection: asyncpg.Connection, program_id: str, order: asyncpg.Record, expiry: datetime | None
) -> None:
    """In the transaction that stores an order: `purchase.first` or `purchase.repeat` (by
    whether the customer had an order before: `customer_orders`, which `insert_order` read from
    the customer's lifecycle row as it counted the order; their orders take turns on a lock),
    and `points.earned` when it earned points."""
    customer_id = order["customer_id"]
    count = order["customer_orders"]
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


async def emit_points_returned(
    connection: asyncpg.Connection, program_id: str, returned: PointsReturned, occurred_at: datetime
) -> None:
    """In the transaction of a refund that gives back points its order's hold paid with."""
    await emit(
        connection, program_id, EventType.POINTS_RETURNED, returned, returned.customer_id, occurred_at=occurred_at
    )


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
