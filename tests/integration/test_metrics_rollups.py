"""The metrics rollups on the real database: kept in the order's and the refund's
transaction, equal to a rebuild from the orders, and read back by the retention query as
the definition says (checked against the pure reference on random purchase days)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.db import metrics as rows
from service.domain.access import Principal, Scope
from service.domain.clock import ManualClock
from service.domain.earning import Order, OrderLine, Refund
from service.domain.metrics import Period, count_retention
from service.usecases import metrics, orders
from service.usecases.earning_rules import RulesDraft, publish_rules
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import admin, enrol

START = datetime(2026, 3, 10, 11, 0, tzinfo=UTC)


def till(program_id: str) -> Principal:
    return Principal(program_id=program_id, scope=Scope.CHECKOUT, key_id="key_till")


async def with_rules(program: ProgramFixture, clock: ManualClock) -> None:
    clock.set(START - timedelta(days=400))
    draft = msgspec.convert({"currency": "EUR", "points_per_unit": 1, "unit_minor": 100}, RulesDraft)
    await publish_rules(admin(program.id), draft, "rules", clock)
    clock.set(START + timedelta(days=60))


async def buy(
    program: ProgramFixture, clock: ManualClock, customer: str, order_id: str, at: datetime, net: int
) -> None:
    order = Order(
        currency="EUR", placed_at=at, lines=(OrderLine(sku="s", category="coffee", unit_price=net, quantity=1),)
    )
    placement = orders.OrderPlacement(order_id=order_id, customer_id=customer, order=order)
    await orders.place_order(till(program.id), program.shop_id, placement, clock)


async def rollups(connection: asyncpg.Connection, program_id: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: [
            tuple(row)
            for row in await connection.fetch(f"SELECT * FROM {table} WHERE program_id = $1 ORDER BY 2, 3", program_id)
        ]
        for table in ("customer_days", "customer_months", "customer_summaries")
    }


async def test_orders_and_refunds_keep_the_rollups(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await with_rules(program, clock)
    ann = await enrol(program.id, "ann", clock)
    # 22:30 UTC on 31 March is 00:30 on 1 April in Amsterdam: an April purchase
    await buy(program, clock, ann, "A-1", datetime(2026, 3, 31, 22, 30, tzinfo=UTC), 1000)
    await buy(program, clock, ann, "A-2", datetime(2026, 3, 31, 21, 30, tzinfo=UTC), 500)  # 23:30, 31 March
    await buy(program, clock, ann, "A-3", datetime(2026, 4, 1, 8, 0, tzinfo=UTC), 2000)
    state = await rollups(owner_connection, program.id)
    assert [(r[2], r[3], r[4]) for r in state["customer_days"]] == [
        (date(2026, 3, 31), 1, 500),
        (date(2026, 4, 1), 2, 3000),
    ]
    assert [(r[2], r[3], r[4]) for r in state["customer_months"]] == [
        (date(2026, 3, 1), 1, 500),
        (date(2026, 4, 1), 2, 3000),
    ]
    assert [r[2:] for r in state["customer_summaries"]] == [(date(2026, 3, 31), date(2026, 4, 1), 3, 2, 3500)]

    # a partial refund lowers the day's net; the purchase still counts
    refund = await orders.refund_order(till(program.id), program.shop_id, "A-3", "R-1", Refund(amount=500), clock)
    assert refund.refunded_net == 500
    # the full refund of the only purchase of 31 March removes that purchase day
    await orders.refund_order(till(program.id), program.shop_id, "A-2", "R-2", Refund(amount=500), clock)
    state = await rollups(owner_connection, program.id)
    assert [(r[2], r[3], r[4]) for r in state["customer_days"]] == [
        (date(2026, 3, 31), 0, 0),
        (date(2026, 4, 1), 2, 2500),
    ]
    assert [r[2:] for r in state["customer_summaries"]] == [(date(2026, 4, 1), date(2026, 4, 1), 2, 1, 2500)]

    # the same refund again changes nothing (idempotent by refund id)
    await orders.refund_order(till(program.id), program.shop_id, "A-2", "R-2", Refund(amount=500), clock)
    assert await rollups(owner_connection, program.id) == state

    # the backfill (a rebuild from the orders) finds exactly what the hooks kept
    assert await metrics.backfill(program.id) == 1
    assert await rollups(owner_connection, program.id) == state


async def test_fully_refunding_every_order_leaves_no_purchase(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await with_rules(program, clock)
    bob = await enrol(program.id, "bob", clock)
    await buy(program, clock, bob, "B-1", START, 800)
    await orders.refund_order(till(program.id), program.shop_id, "B-1", "R-1", Refund(amount=300), clock)
    await orders.refund_order(till(program.id), program.shop_id, "B-1", "R-2", Refund(amount=500), clock)
    state = await rollups(owner_connection, program.id)
    assert [r[2:] for r in state["customer_summaries"]] == [(None, None, 0, 0, 0)]
    await metrics.backfill(program.id)
    assert await rollups(owner_connection, program.id) == state


DAYS = st.lists(st.dates(min_value=date(2025, 10, 1), max_value=date(2026, 6, 30)), min_size=1, max_size=5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    purchases=st.dictionaries(st.sampled_from([f"c{i}" for i in range(12)]), DAYS, max_size=12),
    window=st.sampled_from([1, 7, 30, 90, 200]),
)
async def test_retention_query_agrees_with_the_definition(
    owner_connection: asyncpg.Connection, purchases: dict[str, list[date]], window: int
) -> None:
    program_id = f"prg_metrics_{uuid.uuid4().hex}"
    days = sorted({(customer, day) for customer, found in purchases.items() for day in found})
    await owner_connection.executemany(
        "INSERT INTO customer_days (program_id, customer_id, day, purchases, net) VALUES ($1, $2, $3, 1, 100)",
        [(program_id, customer, day) for customer, day in days],
    )
    await owner_connection.execute(
        "INSERT INTO customer_summaries SELECT program_id, customer_id, min(day), max(day), count(*), count(*),"
        " sum(net) FROM customer_days WHERE program_id = $1 GROUP BY 1, 2",
        program_id,
    )
    periods = [
        Period(start=date(2026, 1, 1), end=date(2026, 1, 31)),
        Period(start=date(2026, 2, 1), end=date(2026, 2, 28)),
        Period(start=date(2026, 1, 1), end=date(2026, 3, 31)),
        Period(start=date(2025, 11, 15), end=date(2026, 5, 20)),  # longer than most windows
    ]
    try:
        found = await rows.retention_counts(owner_connection, program_id, periods, window)
        assert found == [count_retention(purchases, period, window) for period in periods]
    finally:
        await owner_connection.execute("DELETE FROM customer_days WHERE program_id = $1", program_id)
        await owner_connection.execute("DELETE FROM customer_summaries WHERE program_id = $1", program_id)
