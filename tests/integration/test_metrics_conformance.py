"""Clause-by-clause checks of ../shared/METRICS.md on small hand-computed datasets, placed
through the order and refund use cases on the real database (zone Europe/Amsterdam)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import asyncpg

from service.domain.clock import ManualClock
from service.domain.earning import Order, OrderLine, Refund, RefundLine
from service.domain.metrics import Granularity, PurchaseCount
from service.usecases import clv, metrics, orders, signals
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import checkout, enrol
from tests.integration.test_metrics_rollups import buy, rollups, with_rules

AMS = ZoneInfo("Europe/Amsterdam")


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """A wall-clock time in Amsterdam."""
    return datetime(year, month, day, hour, minute, second, tzinfo=AMS)


async def refund(program: ProgramFixture, clock: ManualClock, order_id: str, refund_id: str, amount: int) -> None:
    await orders.refund_order(checkout(program.id), program.shop_id, order_id, refund_id, Refund(amount=amount), clock)


async def march(program: ProgramFixture, clock: ManualClock) -> dict[str, str]:
    await with_rules(program, clock)
    ids = {name: await enrol(program.id, name, clock) for name in ("ann", "bob", "cat", "dan", "eve", "fay", "gus")}
    # ann: 23:59:59 on 28 Feb (active at 1 March) and 23:30 CEST on 31 March (after the clock change)
    await buy(program, clock, ids["ann"], "ann-1", local(2026, 2, 28, 23, 59, 59), 1000)
    await buy(program, clock, ids["ann"], "ann-2", local(2026, 3, 31, 23, 30), 1000)
    # bob: first purchase at exactly 00:00 on 1 March: new in March, not active at 1 March
    await buy(program, clock, ids["bob"], "bob-1", local(2026, 3, 1, 0, 0), 1000)
    # cat: 1 December 2025 is the 90th day before 1 March: active at 1 March, lost by 1 April
    await buy(program, clock, ids["cat"], "cat-1", local(2025, 12, 1, 12), 1000)
    # dan: 30 November is 91 days before 1 March; back on 15 March: reactivated
    await buy(program, clock, ids["dan"], "dan-1", local(2025, 11, 30, 12), 1000)
    await buy(program, clock, ids["dan"], "dan-2", local(2026, 3, 15, 12), 1000)
    # eve: her only order (March) is fully refunded in May: no purchase at all
    await buy(program, clock, ids["eve"], "eve-1", local(2026, 3, 10, 12), 1000)
    # fay: a February order fully refunded, a March purchase: her first purchase ever is in March
    await buy(program, clock, ids["fay"], "fay-1", local(2026, 2, 10, 12), 1000)
    await buy(program, clock, ids["fay"], "fay-2", local(2026, 3, 20, 12), 1000)
    # gus: active at 1 March (20 December); his next order is at 00:00 on 1 April, after the boundary
    await buy(program, clock, ids["gus"], "gus-1", local(2025, 12, 20, 12), 1000)
    await buy(program, clock, ids["gus"], "gus-2", local(2026, 4, 1, 0, 0), 1000)
    # refunds after the period
    await refund(program, clock, "eve-1", "eve-r", 1000)
    await refund(program, clock, "fay-1", "fay-r", 600)
    await refund(program, clock, "fay-1", "fay-r2", 400)
    await refund(program, clock, "gus-1", "gus-r", 250)  # partly: still a purchase, worth 750
    return ids


async def test_retention_of_march_by_hand(program: ProgramFixture, clock: ManualClock) -> None:
    await march(program, clock)
    series = await metrics.retention_series(
        program.id, date(2026, 3, 1), date(2026, 3, 31), Granularity.MONTH, 90, None
    )
    (p,) = series.periods
    # B: ann, cat, gus; E: ann, bob, dan, fay; N: bob, fay; retained: ann; reactivated: dan
    assert (p.b, p.e, p.n, p.retained, p.lost, p.reactivated) == (3, 4, 2, 1, 2, 1)
    assert (p.rate_pct, p.strict_rate_pct, p.churn_rate_pct, p.meets_target) == (66.67, 33.33, 66.67, False)
    # window 30: 1 March looks at [30 Jan, 28 Feb], 1 April at [2 March, 31 March]
    (q,) = (
        await metrics.retention_series(program.id, date(2026, 3, 1), date(2026, 3, 31), Granularity.MONTH, 30, None)
    ).periods
    assert (q.b, q.e, q.n, q.retained, q.lost, q.reactivated) == (1, 3, 2, 1, 0, 1)
    assert (q.rate_pct, q.strict_rate_pct, q.churn_rate_pct) == (100.0, 100.0, 0.0)


async def test_value_figures_of_march_by_hand(program: ProgramFixture, clock: ManualClock) -> None:
    await march(program, clock)
    rep = await metrics.repeat_report(program.id, date(2026, 3, 1), date(2026, 3, 31), PurchaseCount.PURCHASES)
    # March purchases: ann 31 Mar, bob 1 Mar, dan 15 Mar, fay 20 Mar (eve's refunded)
    f = rep.figures
    assert (f.customers, f.repeat_customers, f.purchases, f.net) == (4, 0, 4, 4000)
    ltv = await metrics.historical_ltv(program.id, clock.now())
    # ann 2000, bob 1000, cat 1000, dan 2000, fay 1000, gus 750 + 1000; eve none
    assert (ltv.customers, ltv.net) == (6, 8750)
    cohorts = await metrics.cohort_table(program.id, date(2025, 11, 1), date(2026, 4, 30))
    table = {row.cohort: (row.size, row.active) for row in cohorts.rows}
    assert table == {
        date(2025, 11, 1): (1, [1, 0, 0, 0, 1, 0]),  # dan
        date(2025, 12, 1): (2, [2, 0, 0, 0, 1]),  # cat, gus (April)
        date(2026, 2, 1): (1, [1, 1, 0]),  # ann
        date(2026, 3, 1): (2, [2, 0]),  # bob, fay
    }


async def test_rfm_and_risk_of_the_march_customers_by_hand(program: ProgramFixture, clock: ManualClock) -> None:
    ids = await march(program, clock)
    names = {customer: name for name, customer in ids.items()}
    now = clock.now()  # 9 May 2026
    page = await metrics.rfm_customers(program.id, now, None, None, 100)
    found = {
        names[i.customer_id]: (i.recency_days, i.frequency, i.monetary, i.r, i.f, i.m, i.segment) for i in page.items
    }
    assert found == {
        "ann": (39, 2, 2000, 4, 3, 4, "promising"),
        "bob": (69, 1, 1000, 1, 1, 1, "hibernating"),
        "cat": (159, 1, 1000, 1, 1, 1, "hibernating"),
        "dan": (55, 2, 2000, 2, 3, 4, "at_risk"),
        "fay": (50, 1, 1000, 3, 1, 1, "needs_attention"),
        "gus": (38, 2, 1750, 5, 3, 3, "promising"),
    }
    sizes = await metrics.segment_sizes(program.id, now)
    assert sizes.customers == 6
    assert {s.name: s.size for s in sizes.segments if s.size} == {
        "promising": 2,
        "hibernating": 2,
        "at_risk": 1,
        "needs_attention": 1,
    }
    risk = await signals.risk_customers(program.id, now, None, None, 100)
    light = {names[i.customer_id]: (i.colour.value, i.rule, i.days_inactive, i.never_bought) for i in risk.items}
    assert light["ann"] == ("orange", "inactive 30+ days", 39, False)
    assert light["cat"] == ("red", "inactive 60+ days", 159, False)
    assert light["eve"] == ("green", "no risk rule applies", 0, True)


async def test_clv_summary_of_the_march_customers_by_hand(program: ProgramFixture, clock: ManualClock) -> None:
    ids = await march(program, clock)
    names = {customer: name for name, customer in ids.items()}
    fit = await clv.refit(program.id, clock)
    assert fit.as_of == date(2026, 5, 9) and fit.bgnbd is not None
    page = await clv.predictions(program.id, clock.now(), 12, 0.01, None, 100)
    found = {names[i.customer_id]: (i.x, i.t_x, i.t, i.mean_value) for i in page.items}
    assert found == {
        "ann": (1, round(31 / 7, 4), round(70 / 7, 4), 1000.0),
        "bob": (0, 0.0, round(69 / 7, 4), None),
        "cat": (0, 0.0, round(159 / 7, 4), None),
        "dan": (1, round(105 / 7, 4), round(160 / 7, 4), 1000.0),
        "fay": (0, 0.0, round(50 / 7, 4), None),
        "gus": (1, round(102 / 7, 4), round(140 / 7, 4), 1000.0),
    }


async def test_upsell_and_cross_sell_by_hand(program: ProgramFixture, clock: ManualClock) -> None:
    await with_rules(program, clock)

    async def place(customer: str, order_id: str, day: int, *items: tuple[str, int | None]) -> None:
        lines = tuple(
            OrderLine(sku=f"s{n}", category=c, level=level, unit_price=100, quantity=1)
            for n, (c, level) in enumerate(items)
        )
        order = Order(currency="EUR", placed_at=local(2026, 3, day, 12), lines=lines)
        placement = orders.OrderPlacement(order_id=order_id, customer_id=customer, order=order)
        await orders.place_order(checkout(program.id), program.shop_id, placement, clock)

    u = [await enrol(program.id, f"u{i}", clock) for i in range(8)]
    await place(u[1], "u1-a", 1, ("coffee", 1))
    await place(u[1], "u1-b", 2, ("coffee", 2))  # upsold
    await place(u[2], "u2-a", 1, ("coffee", 2), ("tea", None))
    await place(u[2], "u2-b", 2, ("coffee", 2))  # same level, same categories: neither
    await place(u[3], "u3-a", 1, ("coffee", 1), ("coffee", 3))
    await place(u[3], "u3-b", 2, ("coffee", 2))  # below the best before: not upsold
    await place(u[4], "u4-a", 1, ("coffee", 1))
    await place(u[4], "u4-b", 2, ("tea", 1))  # cross-sold
    await place(u[4], "u4-c", 3, ("coffee", 3))  # fully refunded below: not upsold
    await refund(program, clock, "u4-c", "u4-r", 100)
    await place(u[5], "u5-a", 1, ("coffee", 1))  # one purchase only
    await place(u[6], "u6-a", 1, ("coffee", 1))
    await place(u[6], "u6-b", 2, ("coffee", 3))  # fully refunded: one purchase left
    await refund(program, clock, "u6-b", "u6-r", 100)
    await place(u[7], "u7-a", 2, ("coffee", 1))
    await place(u[7], "u7-b", 1, ("coffee", 2))  # earlier in time although placed second: not upsold
    rates = await metrics.sell_rates(program.id, clock.now())
    assert (rates.repeat_customers, rates.upsold, rates.cross_sold) == (5, 1, 1)
    assert (rates.upsell_rate_pct, rates.cross_sell_rate_pct) == (20.0, 20.0)


async def test_a_free_order_with_every_item_returned_is_not_a_purchase(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """An order of net 0 (free items) is refunded in items: once every item is back it is
    fully refunded and counts nowhere, as any fully refunded order; a partial return keeps it."""
    await with_rules(program, clock)
    zoe, yan = await enrol(program.id, "zoe", clock), await enrol(program.id, "yan", clock)
    free = (OrderLine(sku="gift", category="gifts", unit_price=0, quantity=2),)
    for customer, order_id in ((zoe, "Z-1"), (yan, "Y-1")):
        order = Order(currency="EUR", placed_at=local(2026, 3, 5, 12), lines=free)
        placement = orders.OrderPlacement(order_id=order_id, customer_id=customer, order=order)
        await orders.place_order(checkout(program.id), program.shop_id, placement, clock)
    await buy(program, clock, zoe, "Z-2", local(2026, 3, 6, 12), 500)
    await buy(program, clock, yan, "Y-2", local(2026, 3, 6, 12), 500)
    one_back = Refund(lines=(RefundLine(line=0, quantity=1),))
    await orders.refund_order(checkout(program.id), program.shop_id, "Z-1", "Z-r1", one_back, clock)
    await orders.refund_order(checkout(program.id), program.shop_id, "Z-1", "Z-r2", one_back, clock)  # all back
    await orders.refund_order(checkout(program.id), program.shop_id, "Y-1", "Y-r1", one_back, clock)  # one of two
    rep = await metrics.repeat_report(program.id, date(2026, 3, 1), date(2026, 3, 31), PurchaseCount.PURCHASES)
    # zoe: one purchase (Z-2); yan: two (Y-1 partly returned, Y-2)
    assert (rep.figures.customers, rep.figures.repeat_customers, rep.figures.purchases) == (2, 1, 3)
    summaries = await owner_connection.fetch(
        "SELECT customer_id, first_day, purchases FROM customer_summaries WHERE program_id = $1", program.id
    )
    assert {(r["customer_id"], r["first_day"], r["purchases"]) for r in summaries} == {
        (zoe, date(2026, 3, 6), 1),
        (yan, date(2026, 3, 5), 2),
    }
    rates = await metrics.sell_rates(program.id, clock.now())
    assert rates.repeat_customers == 1  # yan only
    state = await rollups(owner_connection, program.id)
    await metrics.backfill(program.id)
    assert await rollups(owner_connection, program.id) == state


async def test_figures_as_of_today_say_which_day(program: ProgramFixture, clock: ManualClock) -> None:
    """A figure "to date" or "today" depends on the day: its response names it (the local day)."""
    await march(program, clock)
    clock.set(datetime(2026, 5, 9, 22, 30, tzinfo=UTC))  # 00:30 on 10 May in Amsterdam
    now, today = clock.now(), date(2026, 5, 10)
    assert (await metrics.historical_ltv(program.id, now)).as_of == today
    assert (await metrics.sell_rates(program.id, now)).as_of == today
    assert (await signals.risk_counts(program.id, now)).as_of == today
    assert (await signals.risk_customers(program.id, now, None, None, 10)).as_of == today
    await clv.refit(program.id, clock)
    assert (await clv.predictions(program.id, now, 12, 0.01, None, 10)).as_of == today
