"""The tier downgrade warnings and the churn-risk red events read what is due, not every
tier row or buyer of the program (migration 0028), and still tell each customer once per
grace period or lapse, whatever moved them: a refund, a backdated order, a complaint, a
changed rule."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import msgspec
import pytest

from service.db.transaction import in_transaction, transaction
from service.domain.clock import ManualClock
from service.domain.earning import Order, OrderLine, Refund, RefundLine
from service.domain.metrics import MetricSettings, RiskRules
from service.usecases import orders, signals, tiers
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import checkout, enrol
from tests.integration.test_lifecycle_jobs import ROWS_READ
from tests.integration.test_order_life import START, basket, setup_program
from tests.integration.test_tiers import setup as setup_tiers

# Rows a transaction read: index entries and sequentially scanned rows returned to it, and
# heap rows its index scans fetched (this transaction's own counts).
ROWS_TOUCHED = ROWS_READ.replace(
    "sum(pg_stat_get_xact_tuples_returned(c.oid))",
    "sum(pg_stat_get_xact_tuples_returned(c.oid) + pg_stat_get_xact_tuples_fetched(c.oid))",
)


# The same per index and table, to say what a round read when it read too much.
BY_RELATION = (
    "SELECT c.relname, pg_stat_get_xact_tuples_returned(c.oid) + pg_stat_get_xact_tuples_fetched(c.oid) AS n"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
    " AND c.relkind IN ('r', 'i')"
)


class _Counting:
    """A job's connection that counts the rows each `fetch` (a round's read of what is due)
    touches, and by which index or table (`seen`); everything else goes to the connection."""

    def __init__(self, connection: asyncpg.Connection, reads: list[int], seen: list[str] | None = None) -> None:
        self._connection = connection
        self._reads = reads
        self._seen = seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        before = {row["relname"]: row["n"] for row in await self._connection.fetch(BY_RELATION)}
        rows: list[asyncpg.Record] = await self._connection.fetch(query, *args)
        after = {row["relname"]: row["n"] for row in await self._connection.fetch(BY_RELATION)}
        touched = {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name, 0)}
        self._reads.append(sum(touched.values()))
        if self._seen is not None:
            self._seen.append(f"{query[:40]}: {touched}")
        return rows


async def vacuum(owner: asyncpg.Connection, *tables: str) -> None:
    """Dead versions left by the test's own writes (and the tests before) out of the indexes,
    so a round's count is what it reads, not what vacuum has not reached yet."""
    for table in tables:
        await owner.execute(f"VACUUM ANALYZE {table}")


async def red_events(owner: asyncpg.Connection, program_id: str) -> list[dict[str, Any]]:
    rows = await owner.fetch(
        "SELECT payload, occurred_at FROM event_outbox WHERE program_id = $1 AND type = 'customer.churn_risk_red'"
        " UNION ALL SELECT payload, occurred_at FROM events WHERE program_id = $1"
        " AND type = 'customer.churn_risk_red' ORDER BY 2",
        program_id,
    )
    return [json.loads(row["payload"]) for row in rows]


async def place(program: ProgramFixture, clock: ManualClock, customer: str, order_id: str, at: datetime) -> None:
    placement = orders.OrderPlacement(order_id=order_id, customer_id=customer, order=basket(at))
    await orders.place_order(checkout(program.id), program.shop_id, placement, clock)


# --- Churn risk red --------------------------------------------------------------------


async def test_a_churn_round_reads_the_days_that_crossed_the_cutoff_not_every_buyer(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thirty buyers lapsed and told and thirty active ones cost a round nothing: a round reads
    the customers of the purchase days that crossed the cutoff since the round before. Before,
    every round read every customer of the program (60+ rows, 130+ with their summaries)."""
    reads: list[int] = []
    seen: list[str] = []

    @asynccontextmanager
    async def counting() -> AsyncIterator[Any]:
        async with transaction() as connection:
            yield _Counting(connection, reads, seen)

    monkeypatch.setattr(signals, "transaction", counting)
    await setup_program(program, clock)
    clock.set(START - timedelta(days=20))
    for number in range(30):
        customer = await enrol(program.id, f"old-{number}", clock)
        await place(program, clock, customer, f"O-{number}", START - timedelta(days=20))
    clock.set(START + timedelta(days=40))  # the old ones are 60 days inactive
    for number in range(30):
        customer = await enrol(program.id, f"active-{number}", clock)
        await place(program, clock, customer, f"A-{number}", clock.now())
    # orders placed on the day they are stored write nothing for the round to look at
    assert (
        await owner_connection.fetchval("SELECT count(*) FROM churn_red_checks WHERE program_id = $1", program.id) == 0
    )
    assert await signals.emit_churn_risk_red(program.id, clock) == 30
    first = max(reads)

    fresh = []
    for number in range(3):
        clock.set(START - timedelta(days=19 - number))
        fresh.append(await enrol(program.id, f"fresh-{number}", clock))
        await place(program, clock, fresh[-1], f"F-{number}", clock.now())
    await vacuum(owner_connection, "customer_days", "customer_summaries", "event_marks")
    for number in range(3):
        clock.set(START + timedelta(days=41 + number))  # one of the fresh ones due each day
        reads.clear()
        seen.clear()
        assert await signals.emit_churn_risk_red(program.id, clock) == 1
        # the due customer's day entry, summary and signals (by key)
        assert sum(reads) <= 8, f"rows touched by the round: {seen} (the first round: {first})"
        reads.clear()
        seen.clear()
        assert await signals.emit_churn_risk_red(program.id, clock) == 0
        assert sum(reads) <= 2, f"rows touched by a round with nothing due: {seen}"
    assert first >= 30  # the first round read the history once


async def test_churn_red_behind_the_scan_by_refund_backdated_order_complaint_or_rule(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """Buyers whose last purchase day lands behind the days the rounds have read are told at
    the next round, once per lapse: a refund that takes away the later purchase, a backdated
    order, an open complaint (again after each new purchase day), a shorter rule."""
    await setup_program(program, clock)
    till = checkout(program.id)
    ann = await enrol(program.id, "ann", clock)  # refunds her later order
    bob = await enrol(program.id, "bob", clock)  # an import backdates his only order
    cat = await enrol(program.id, "cat", clock)  # complains
    dan = await enrol(program.id, "dan", clock)  # lapsed 40 days when the rule becomes 30
    await place(program, clock, ann, "ann-1", START)
    await place(program, clock, cat, "cat-1", START)
    clock.set(START + timedelta(days=50))
    await place(program, clock, ann, "ann-2", clock.now())
    clock.set(START + timedelta(days=35))
    await place(program, clock, dan, "dan-1", clock.now())
    clock.set(START + timedelta(days=70))
    assert await signals.emit_churn_risk_red(program.id, clock) == 1  # cat, 70 days inactive
    assert await signals.emit_churn_risk_red(program.id, clock) == 0

    await orders.refund_order(till, program.shop_id, "ann-2", "R-1", Refund(amount=2500), clock)
    await place(program, clock, bob, "bob-1", START - timedelta(days=5))
    assert await signals.emit_churn_risk_red(program.id, clock) == 2  # ann and bob, behind the scan
    assert await signals.emit_churn_risk_red(program.id, clock) == 0

    await place(program, clock, cat, "cat-2", clock.now())  # green again
    assert await signals.emit_churn_risk_red(program.id, clock) == 0
    complaint = signals.Signal(
        signal_id="s-1",
        customer_id=cat,
        kind=signals.SignalKind.COMPLAINT_OPENED,
        reference="C-1",
        occurred_at=clock.now(),
    )
    await signals.record_signal(till, complaint, clock)
    assert await signals.emit_churn_risk_red(program.id, clock) == 1  # red by the complaint
    assert await signals.emit_churn_risk_red(program.id, clock) == 0
    clock.advance(timedelta(days=1))
    await place(program, clock, cat, "cat-3", clock.now())  # a new lapse, the complaint still open
    assert await signals.emit_churn_risk_red(program.id, clock) == 1
    assert await signals.emit_churn_risk_red(program.id, clock) == 0

    settings = MetricSettings(risk=RiskRules(red_inactive_days=30, orange_inactive_days=10))
    async with transaction() as connection:
        await connection.execute(
            "INSERT INTO metric_settings (program_id, settings, updated_at) VALUES ($1, $2, $3)",
            program.id,
            msgspec.json.encode(settings).decode(),
            clock.now(),
        )
    assert await signals.emit_churn_risk_red(program.id, clock) == 1  # dan
    assert await signals.emit_churn_risk_red(program.id, clock) == 0

    events = await red_events(owner_connection, program.id)
    told = [(event["customer_id"], event["days_since_last_order"], event["rule"]) for event in events]
    assert sorted(told) == sorted(
        [
            (cat, 70, "inactive 60+ days"),
            (ann, 70, "inactive 60+ days"),
            (bob, 75, "inactive 60+ days"),
            (cat, 0, "open complaint"),
            (cat, 0, "open complaint"),
            (dan, 36, "inactive 30+ days"),
        ]
    )


# --- Tier downgrade warnings -----------------------------------------------------------


async def grace(owner: asyncpg.Connection, program_id: str, customer: str, ends_at: datetime | None) -> None:
    """Put a customer's tier in a grace period ending at `ends_at` (None: out of grace)."""
    await owner.execute(
        "UPDATE customer_tiers SET earned_code = 'silver', effective_code = 'silver', review_at = $3,"
        " grace_ends_at = $4 WHERE program_id = $1 AND customer_id = $2",
        program_id,
        customer,
        START,
        ends_at,
    )


async def warnings(owner: asyncpg.Connection, program_id: str) -> list[tuple[str, str]]:
    rows = await owner.fetch(
        "SELECT payload FROM (SELECT payload, occurred_at, id FROM event_outbox WHERE program_id = $1"
        " AND type = 'tier.downgrade_warning' UNION ALL SELECT payload, occurred_at, id FROM events"
        " WHERE program_id = $1 AND type = 'tier.downgrade_warning') e ORDER BY occurred_at, id",
        program_id,
    )
    return [(p["customer_id"], p["downgrade_at"]) for p in (json.loads(row["payload"]) for row in rows)]


async def test_a_warning_round_reads_the_grace_periods_ending_in_the_window_not_every_tier(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """Forty customers in no grace period, twenty whose grace ends after the window and twenty
    already warned cost a round nothing: it reads the grace periods ending within
    `warning_days` not warned of yet. Before, every round read every tier row there was."""
    await setup_tiers(program, clock)
    customers = [await enrol(program.id, f"c-{number}", clock) for number in range(82)]
    async with transaction() as connection:
        await connection.execute(
            "INSERT INTO customer_tiers (program_id, customer_id, earned_code, effective_code, since, updated_at)"
            " SELECT $1, c, 'bronze', 'bronze', $3, $3 FROM unnest($2::text[]) AS c",
            program.id,
            customers,
            START,
        )
    now = START + timedelta(days=400)
    clock.set(now)
    for customer in customers[40:60]:
        await grace(owner_connection, program.id, customer, now + timedelta(days=20))
    for customer in customers[60:80]:
        await grace(owner_connection, program.id, customer, now + timedelta(days=10))
    await warn(program, now)
    assert len(await warnings(owner_connection, program.id)) == 20  # told: they stay in grace, in the window
    for customer in customers[80:]:
        await grace(owner_connection, program.id, customer, now + timedelta(days=13))
    await vacuum(owner_connection, "customer_tiers")
    due = 2
    touched = await warn(program, now)
    assert len(await warnings(owner_connection, program.id)) == 20 + due
    assert touched <= 2 * due, f"rows touched: {touched}"  # their index entries and rows
    touched = await warn(program, now)
    assert len(await warnings(owner_connection, program.id)) == 20 + due
    # nothing due: the entries of the two told, if no vacuum or scan marked them dead yet
    assert touched <= 2 * due, f"rows touched: {touched}"


async def warn(program: ProgramFixture, now: datetime) -> int:
    """One warning round at `now` in its own transaction; returns the rows its read of what
    is due touched."""
    reads: list[int] = []
    await in_transaction(
        lambda connection: tiers._warn_of_downgrades(
            cast(asyncpg.Connection, _Counting(connection, reads)), program.id, now
        )
    )
    return sum(reads)


async def test_a_warning_once_per_grace_period_and_none_for_keys_marked_before(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """A customer is warned once per grace period (a new one warns again); a warning whose key
    was marked before the marker column existed emits nothing and leaves the index."""
    await setup_tiers(program, clock)
    ann, bob = await enrol(program.id, "ann", clock), await enrol(program.id, "bob", clock)
    async with transaction() as connection:
        await connection.execute(
            "INSERT INTO customer_tiers (program_id, customer_id, earned_code, effective_code, since, updated_at)"
            " SELECT $1, c, 'bronze', 'bronze', $3, $3 FROM unnest($2::text[]) AS c",
            program.id,
            [ann, bob],
            START,
        )
    now = START + timedelta(days=400)
    ends = now + timedelta(days=10)
    await grace(owner_connection, program.id, ann, ends)
    await grace(owner_connection, program.id, bob, ends)
    await owner_connection.execute(
        "INSERT INTO event_marks (program_id, key, event_id, created_at) VALUES ($1, $2, 'evt_x', $3)",
        program.id,
        f"tier-downgrade-warning:{bob}:{ends.astimezone(UTC).isoformat()}",
        now,
    )
    await warn(program, now)
    await warn(program, now)
    assert await warnings(owner_connection, program.id) == [(ann, ends.strftime("%Y-%m-%dT%H:%M:%SZ"))]
    async with transaction() as connection:
        assert (
            await connection.fetchval(
                "SELECT count(*) FROM customer_tiers WHERE program_id = $1"
                " AND grace_ends_at IS NOT NULL AND downgrade_warned_for IS DISTINCT FROM grace_ends_at",
                program.id,
            )
            == 0
        )  # both left the index
    await grace(owner_connection, program.id, ann, None)  # qualified again
    await grace(owner_connection, program.id, ann, ends + timedelta(days=1))  # a later grace period
    await warn(program, now)
    await warn(program, now)
    assert len(await warnings(owner_connection, program.id)) == 2


async def test_a_customer_behind_the_scan_but_not_red_yet_is_told_when_red(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """The rule lengthened after the rounds read past a day, then a refund takes a customer's
    last purchase back to that day: not red yet, they are kept in view until they are."""
    await setup_program(program, clock)
    till = checkout(program.id)
    ann = await enrol(program.id, "ann", clock)
    await place(program, clock, ann, "ann-1", START)
    clock.set(START + timedelta(days=30))
    await place(program, clock, ann, "ann-2", clock.now())
    clock.set(START + timedelta(days=70))  # the rounds read through START + 10
    assert await signals.emit_churn_risk_red(program.id, clock) == 0
    settings = MetricSettings(risk=RiskRules(red_inactive_days=90))
    async with transaction() as connection:
        await connection.execute(
            "INSERT INTO metric_settings (program_id, settings, updated_at) VALUES ($1, $2, $3)",
            program.id,
            msgspec.json.encode(settings).decode(),
            clock.now(),
        )
    await orders.refund_order(till, program.shop_id, "ann-2", "R-1", Refund(amount=2500), clock)
    assert await signals.emit_churn_risk_red(program.id, clock) == 0  # 70 days: not red at 90
    clock.set(START + timedelta(days=89))
    assert await signals.emit_churn_risk_red(program.id, clock) == 0
    clock.set(START + timedelta(days=90))
    assert await signals.emit_churn_risk_red(program.id, clock) == 1
    assert await signals.emit_churn_risk_red(program.id, clock) == 0
    assert [event["days_since_last_order"] for event in await red_events(owner_connection, program.id)] == [90]


async def test_a_customer_whose_only_purchase_was_returned_is_dropped_not_a_failed_round(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """A backdated order names its customer behind the scan; when its items all come back
    (a free order: refunded in items), the customer has bought nothing and cannot churn: the
    round drops them rather than fail on a lapse of no length."""
    await setup_program(program, clock)
    till = checkout(program.id)
    ann, bob = await enrol(program.id, "ann", clock), await enrol(program.id, "bob", clock)
    await place(program, clock, bob, "bob-1", START)
    clock.set(START + timedelta(days=70))  # the rounds read past START
    assert await signals.emit_churn_risk_red(program.id, clock) == 1
    free = Order(
        currency="EUR",
        placed_at=START + timedelta(days=1),  # behind the scan
        lines=(OrderLine(sku="sample", category="coffee", unit_price=0, quantity=2),),
    )
    await orders.place_order(
        till, program.shop_id, orders.OrderPlacement(order_id="ann-1", customer_id=ann, order=free), clock
    )
    await orders.refund_order(
        till, program.shop_id, "ann-1", "R-1", Refund(lines=(RefundLine(line=0, quantity=2),)), clock
    )
    assert await signals.emit_churn_risk_red(program.id, clock) == 0
    checks = await owner_connection.fetchval("SELECT count(*) FROM churn_red_checks WHERE program_id = $1", program.id)
    assert checks == 0
