"""The metrics rollups on the real database: kept in the order's and the refund's
transaction (also for orders placed out of order and concurrently), equal to a rebuild
from the orders, and read back by the retention and RFM queries as the definitions say
(checked against the pure references on random data)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.db import retention, rfm
from service.domain.clock import ManualClock
from service.domain.earning import Order, OrderLine, Refund
from service.domain.errors import DomainError
from service.domain.metric_rollups import SPELL_WINDOW_DAYS
from service.domain.metrics import Period, count_retention, quintile_scores, segment_names, segment_of, segment_sizes
from service.usecases import metrics, orders
from service.usecases.earning_rules import RulesDraft, publish_rules
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import admin, checkout, enrol

START = datetime(2026, 3, 10, 11, 0, tzinfo=UTC)


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
    await orders.place_order(checkout(program.id), program.shop_id, placement, clock)


COUNTS = {  # the counts and their key columns; rows whose counts are all zero count as absent
    "metric_day_counts": "day, shard",
    "metric_cohort_counts": "cohort, month, shard",
    "metric_value_counts": "measure, value, shard",
}


async def rollups(connection: asyncpg.Connection, program_id: str) -> dict[str, list[tuple[Any, ...]]]:
    found = {
        table: [
            tuple(row)
            for row in await connection.fetch(f"SELECT * FROM {table} WHERE program_id = $1 ORDER BY 2, 3", program_id)
        ]
        for table in ("customer_days", "customer_months", "customer_summaries", "customer_spells")
    }
    for table, key in COUNTS.items():
        rows = await connection.fetch(f"SELECT * FROM {table} WHERE program_id = $1 ORDER BY {key}", program_id)
        found[table] = [tuple(row) for row in rows if any(value for value in tuple(row)[len(key.split(",")) + 1 :])]
    return found


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
    # active at the boundaries [1 April, 1 April + 91 days): one spell
    assert [r[2:] for r in state["customer_spells"]] == [(date(2026, 4, 1), date(2026, 7, 1), None, None)]
    assert [r[1:3] + r[4:] for r in state["metric_cohort_counts"]] == [
        (date(2026, 3, 1), date(2026, 3, 1), 1),
        (date(2026, 3, 1), date(2026, 4, 1), 1),
    ]

    # a partial refund lowers the day's net; the purchase still counts
    refund = await orders.refund_order(checkout(program.id), program.shop_id, "A-3", "R-1", Refund(amount=500), clock)
    assert refund.refunded_net == 500
    # the full refund of the only purchase of 31 March removes that purchase day
    await orders.refund_order(checkout(program.id), program.shop_id, "A-2", "R-2", Refund(amount=500), clock)
    state = await rollups(owner_connection, program.id)
    assert [(r[2], r[3], r[4]) for r in state["customer_days"]] == [
        (date(2026, 3, 31), 0, 0),
        (date(2026, 4, 1), 2, 2500),
    ]
    assert [r[2:] for r in state["customer_summaries"]] == [(date(2026, 4, 1), date(2026, 4, 1), 2, 1, 2500)]
    assert [r[2:] for r in state["customer_spells"]] == [(date(2026, 4, 2), date(2026, 7, 1), None, None)]
    assert [r[1:3] + r[4:] for r in state["metric_cohort_counts"]] == [(date(2026, 4, 1), date(2026, 4, 1), 1)]

    # the same refund again changes nothing (idempotent by refund id)
    await orders.refund_order(checkout(program.id), program.shop_id, "A-2", "R-2", Refund(amount=500), clock)
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
    await orders.refund_order(checkout(program.id), program.shop_id, "B-1", "R-1", Refund(amount=300), clock)
    await orders.refund_order(checkout(program.id), program.shop_id, "B-1", "R-2", Refund(amount=500), clock)
    state = await rollups(owner_connection, program.id)
    assert [r[2:] for r in state["customer_summaries"]] == [(None, None, 0, 0, 0)]
    await metrics.backfill(program.id)
    assert await rollups(owner_connection, program.id) == state


DAYS = st.lists(st.dates(min_value=date(2025, 10, 1), max_value=date(2026, 6, 30)), min_size=1, max_size=5)
PERIODS = [
    Period(start=date(2026, 1, 1), end=date(2026, 1, 31)),
    Period(start=date(2026, 2, 1), end=date(2026, 2, 28)),
    Period(start=date(2026, 1, 1), end=date(2026, 3, 31)),  # 90 days: as long as the spell window
    Period(start=date(2026, 1, 1), end=date(2026, 4, 1)),  # 91
    Period(start=date(2026, 1, 1), end=date(2026, 4, 2)),  # 92: a whole spell can fit inside
    Period(start=date(2025, 11, 15), end=date(2026, 5, 20)),  # longer than most windows
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    purchases=st.dictionaries(st.sampled_from([f"c{i}" for i in range(12)]), DAYS, max_size=12),
    window=st.sampled_from([1, 7, 30, 90, 90, 200]),
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
    await owner_connection.execute("SELECT rebuild_metric_counts($1)", program_id)
    try:
        expected = [count_retention(purchases, period, window) for period in PERIODS]
        assert await retention.retention_counts(owner_connection, program_id, PERIODS, window) == expected
        assert await retention.scanned_retention_counts(owner_connection, program_id, PERIODS, window) == expected
        if window == SPELL_WINDOW_DAYS:
            assert await retention.spell_retention_counts(owner_connection, program_id, PERIODS) == expected
    finally:
        await _forget(owner_connection, program_id)


async def _forget(connection: asyncpg.Connection, program_id: str) -> None:
    for table in ("customer_days", "customer_summaries", "customer_spells", *COUNTS):
        await connection.execute(f"DELETE FROM {table} WHERE program_id = $1", program_id)


async def test_out_of_order_orders_and_refunds_keep_the_rollups(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await with_rules(program, clock)
    clock.set(datetime(2026, 9, 1, tzinfo=UTC))
    ann, bob = await enrol(program.id, "ann", clock), await enrol(program.id, "bob", clock)
    # ann: 1 March, then 1 June (a second spell), then a backdated 15 April joins both spells
    for order_id, day in (("A-1", date(2026, 3, 1)), ("A-2", date(2026, 6, 1)), ("A-3", date(2026, 4, 15))):
        await buy(program, clock, ann, order_id, datetime.combine(day, time(9), UTC), 1000)
        if order_id == "A-2":
            spells = [r[2:] for r in (await rollups(owner_connection, program.id))["customer_spells"]]
            assert spells == [
                (date(2026, 3, 2), date(2026, 5, 31), None, None),
                (date(2026, 6, 2), date(2026, 8, 31), date(2026, 3, 2), date(2026, 5, 31)),
            ]
    state = await rollups(owner_connection, program.id)
    assert [r[2:] for r in state["customer_spells"]] == [(date(2026, 3, 2), date(2026, 8, 31), None, None)]
    # bob's first order comes after a later one: his cohort moves back a month
    await buy(program, clock, bob, "B-1", datetime(2026, 5, 3, 9, tzinfo=UTC), 700)
    await buy(program, clock, bob, "B-2", datetime(2026, 4, 20, 9, tzinfo=UTC), 300)
    # refunding ann's backdated order splits her spell again; bob's first order goes entirely
    await orders.refund_order(checkout(program.id), program.shop_id, "A-3", "R-1", Refund(amount=1000), clock)
    await orders.refund_order(checkout(program.id), program.shop_id, "B-2", "R-2", Refund(amount=100), clock)
    await orders.refund_order(checkout(program.id), program.shop_id, "B-2", "R-3", Refund(amount=200), clock)
    state = await rollups(owner_connection, program.id)
    assert len(state["customer_spells"]) == 3
    assert await metrics.backfill(program.id) == 2
    assert await rollups(owner_connection, program.id) == state


ORDERS = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 380), st.sampled_from([0, 100, 2500, 99_999])), min_size=1, max_size=6
)
REFUNDS = st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["part", "all"])), max_size=3)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(placed=ORDERS, refunded=REFUNDS)
async def test_rollups_equal_a_rebuild_after_any_orders_and_refunds(
    program: ProgramFixture,
    clock: ManualClock,
    owner_connection: asyncpg.Connection,
    placed: list[tuple[int, int, int]],
    refunded: list[tuple[int, str]],
) -> None:
    """Orders of three customers on days in any order (backdated up to 380 days), then
    partial and full refunds: the kept rollups are what a rebuild finds."""
    await with_rules(program, clock)
    run = uuid.uuid4().hex[:8]
    customers = [await enrol(program.id, f"{run}-{i}", clock) for i in range(3)]
    for n, (who, days_back, net) in enumerate(placed):
        await buy(program, clock, customers[who], f"{run}-{n}", START - timedelta(days=days_back, hours=n), net or 1)
    for n, (which, how) in enumerate(refunded):
        if which >= len(placed):
            continue
        net = placed[which][2] or 1
        amount = net if how == "all" else max(1, net // 3)
        refund = Refund(amount=amount)
        with contextlib.suppress(DomainError):  # more than is left to refund
            await orders.refund_order(
                checkout(program.id), program.shop_id, f"{run}-{which}", f"{run}-r{n}", refund, clock
            )
    state = await rollups(owner_connection, program.id)
    await metrics.backfill(program.id)
    assert await rollups(owner_connection, program.id) == state


async def test_concurrent_orders_of_many_customers(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """Orders of different customers, written at once, all land and keep the rollups exact."""
    await with_rules(program, clock)
    customers = [await enrol(program.id, f"c{i}", clock) for i in range(24)]

    async def shop(i: int, customer: str) -> None:
        for k in range(3):
            await buy(program, clock, customer, f"C-{i}-{k}", START - timedelta(days=30 * k), 1000 + i)

    await asyncio.gather(*(shop(i, customer) for i, customer in enumerate(customers)))
    state = await rollups(owner_connection, program.id)
    assert len(state["customer_summaries"]) == 24
    await metrics.backfill(program.id)
    assert await rollups(owner_connection, program.id) == state


NETS = [0, 99, 100, 109, 110, 3500, 3599, 3600, 9_100_000_000_000_000_000]  # band edges, the largest band
SUMMARIES = st.lists(
    st.tuples(
        st.integers(0, 40),  # days since the last purchase
        st.integers(1, 6),  # purchases
        st.one_of(
            st.sampled_from([0, 99, 100, 109, 110, 3500, 3599, 3600, 9_100_000_000_000_000_000]), st.integers(0, 10**7)
        ),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(summaries=SUMMARIES)
async def test_rfm_scores_and_segments_agree_with_the_ranking(
    owner_connection: asyncpg.Connection, summaries: list[tuple[int, int, int]]
) -> None:
    """Scores from the cuts equal the quintiles of the ranks (ties share), page by page."""
    program_id = f"prg_rfm_{uuid.uuid4().hex}"
    today = date(2026, 6, 1)
    await owner_connection.executemany(
        "INSERT INTO customer_summaries (program_id, customer_id, first_day, last_day, purchases, purchase_days, net)"
        " VALUES ($1, $2, $3, $3, $4, 1, $5)",
        [(program_id, f"c{i:02d}", today - timedelta(days=ago), n, net) for i, (ago, n, net) in enumerate(summaries)],
    )
    await owner_connection.execute("SELECT rebuild_metric_counts($1)", program_id)
    try:
        r = quintile_scores([-ago for ago, _, _ in summaries])
        f = quintile_scores([n for _, n, _ in summaries])
        m = quintile_scores([net for _, _, net in summaries])
        expected = [
            (f"c{i:02d}", ago, n, net, r[i], f[i], m[i], segment_of(r[i], f[i], m[i], n))
            for i, (ago, n, net) in enumerate(summaries)
        ]
        cuts = await rfm.load_cuts(owner_connection, program_id)
        assert cuts is not None and cuts.customers == len(summaries)
        found: list[tuple[Any, ...]] = []
        after = None
        while page := await rfm.rfm_page(owner_connection, program_id, cuts, today, None, after, 7):
            found.extend(tuple(row) for row in page)
            after = page[-1]["customer_id"]
        assert found == expected
        sizes = segment_sizes(await rfm.score_cells(owner_connection, program_id, cuts))
        assert sizes == {name: sum(row[7] == name for row in expected) for name in segment_names()}
        champions = await rfm.rfm_page(owner_connection, program_id, cuts, today, "champions", None, 100)
        assert [row["customer_id"] for row in champions] == [row[0] for row in expected if row[7] == "champions"]
    finally:
        await _forget(owner_connection, program_id)


async def test_the_median_lifetime_value_of_an_even_count_is_the_middle_of_the_two(
    program: ProgramFixture, clock: ManualClock
) -> None:
    await with_rules(program, clock)
    for name, net in (("ann", 100), ("bob", 300), ("cat", 700), ("dan", 800)):
        await buy(program, clock, await enrol(program.id, name, clock), f"{name}-1", START, net)
    ltv = await metrics.historical_ltv(program.id, clock.now())
    assert (ltv.customers, ltv.net, ltv.mean, ltv.median) == (4, 1900, 475.0, 500.0)  # not 300, the lower one
