"""An order's whole life on the real ledger, with the exact entries at each step:
award -> pending -> release -> redeem (hold, partial capture) -> partial refund -> expiry."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest

from service.db.ledger import WrittenEntry
from service.domain.clock import ManualClock
from service.domain.earning import Order, OrderLine, Refund, RefundLine
from service.domain.errors import IdempotencyKeyReused, InvalidInput, NotFound
from service.domain.expiry import ExpiryPolicy, ExpiryRule
from service.domain.orders import ReturnPolicy, ReturnSettings
from service.usecases import jobs, ledger, ledger_jobs, orders
from service.usecases.earning_rules import RulesDraft, publish_rules
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import admin, balances, checkout, enrol, ledger_invariants, sound

START = datetime(2026, 3, 10, 11, 0, tzinfo=UTC)  # 12:00 in Amsterdam


async def setup_program(program: ProgramFixture, clock: ManualClock, **rules: Any) -> None:
    clock.set(START - timedelta(days=30))
    draft = msgspec.convert({"currency": "EUR", "points_per_unit": 10, "unit_minor": 100} | rules, RulesDraft)
    await publish_rules(admin(program.id), draft, "rules-1", clock)
    clock.set(START)


def basket(placed_at: datetime = START) -> Order:
    return Order(
        currency="EUR",
        placed_at=placed_at,
        lines=(
            OrderLine(sku="espresso", category="coffee", unit_price=450, quantity=2),  # 900
            OrderLine(sku="mug", category="homeware", unit_price=1600, quantity=1),  # 1600
        ),
    )


async def entry_postings(connection: asyncpg.Connection, program_id: str, entry_id: int) -> list[tuple[str, int, Any]]:
    rows = await connection.fetch(
        "SELECT a.code, p.amount, p.balance_after FROM postings p"
        " JOIN accounts a ON a.program_id = p.program_id AND a.id = p.account_id"
        " WHERE p.program_id = $1 AND p.entry_id = $2 ORDER BY p.line",
        program_id,
        entry_id,
    )
    return [(row["code"], row["amount"], row["balance_after"]) for row in rows]


def postings(entry: WrittenEntry) -> list[tuple[str, int, Any]]:
    return [(p.account, p.amount, p.balance_after) for p in entry.postings]


async def test_the_whole_life_of_an_order(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup_program(program, clock)
    await ledger.set_expiry_rule(program.id, ExpiryRule(ExpiryPolicy.DAYS, 180))
    ann = await enrol(program.id, "ann", clock)
    till = checkout(program.id)
    placement = orders.OrderPlacement(order_id="A-1001", customer_id=ann, order=basket())

    # award: 2500 minor units at 10 points per 100 -> 250 points, pending
    placed = await orders.place_order(till, program.shop_id, placement, clock)
    assert (placed.points, placed.status, placed.net) == (250, "pending", 2500)
    assert [(c.rule, c.points) for c in placed.breakdown] == [("base", 250)]
    assert placed.available_from == datetime(2026, 3, 25, 0, 0, tzinfo=UTC) - timedelta(hours=1)  # 00:00 CET
    assert placed.award_entry_id is not None
    award = await entry_postings(owner_connection, program.id, placed.award_entry_id)
    assert award == [("system:issued", -250, None), (f"customer:{ann}:pending", 250, 250)]
    lot_expiry = await owner_connection.fetchval(
        "SELECT expires_at FROM lots WHERE program_id = $1 AND entry_id = $2", program.id, placed.award_entry_id
    )
    assert lot_expiry == datetime(2026, 9, 21, 22, 0, tzinfo=UTC)  # 180 local days after release (25 March), CEST

    # the same order again is the same answer; the same id with other content is refused
    assert await orders.place_order(till, program.shop_id, placement, clock) == placed
    changed = msgspec_replace_quantity(placement, 3)
    with pytest.raises(IdempotencyKeyReused):
        await orders.place_order(till, program.shop_id, changed, clock)

    # release: nothing before the return window ends, then pending -> available
    clock.set(placed.available_from - timedelta(seconds=1))
    assert await orders.release_due_orders(program.id, clock) == 0
    clock.set(placed.available_from)
    assert await orders.release_due_orders(program.id, clock) == 1
    released = await orders.get_order(checkout(program.id), program.shop_id, "A-1001")
    assert released.status == "released" and released.release_entry_id is not None
    assert await entry_postings(owner_connection, program.id, released.release_entry_id) == [
        (f"customer:{ann}:pending", -250, 0),
        (f"customer:{ann}:available", 250, 250),
    ]
    assert await orders.release_due_orders(program.id, clock) == 0  # released once

    # redeem: hold 200, the basket changes, capture 120 (80 return)
    hold = await ledger.hold_points(till, ledger.HoldRequest(customer_id=ann, amount=200), "redeem-1", clock)
    captured = await ledger.capture_hold(till, hold.id, 120, "capture-1", clock)
    assert captured.resolve_entry_id is not None
    assert await entry_postings(owner_connection, program.id, captured.resolve_entry_id) == [
        (f"customer:{ann}:held", -200, 0),
        ("system:redeemed", 120, None),
        (f"customer:{ann}:available", 80, 130),
    ]

    # partial refund: one espresso back (450 of 2500) -> 45 points, from available
    refund = Refund(lines=(RefundLine(line=0, quantity=1),))
    taken = await orders.refund_order(till, program.shop_id, "A-1001", "R-1", refund, clock)
    assert (taken.points, taken.from_pending, taken.from_available, taken.owed, taken.forgiven) == (45, 0, 45, 0, 0)
    assert taken.entry_id is not None
    assert await entry_postings(owner_connection, program.id, taken.entry_id) == [
        (f"customer:{ann}:available", -45, 85),
        ("system:issued", 45, None),
    ]
    assert await orders.refund_order(till, program.shop_id, "A-1001", "R-1", refund, clock) == taken

    # expiry: the rest expires with its lot, by the program's time zone
    clock.set(lot_expiry)
    assert await ledger_jobs.expire_points(program.id, clock) == 1
    expiry_entry = await owner_connection.fetchval(
        "SELECT max(id) FROM entries WHERE program_id = $1 AND kind = 'expiry'", program.id
    )
    assert await entry_postings(owner_connection, program.id, expiry_entry) == [
        (f"customer:{ann}:available", -85, 0),
        ("system:expired", 85, None),
    ]
    assert (await balances(owner_connection, program.id, ann))["available"] == 0
    await sound(owner_connection, program.id)


def msgspec_replace_quantity(placement: orders.OrderPlacement, quantity: int) -> orders.OrderPlacement:
    lines = (placement.order.lines[0], OrderLine(sku="mug", category="homeware", unit_price=1600, quantity=quantity))
    order = Order(currency="EUR", placed_at=placement.order.placed_at, lines=lines)
    return orders.OrderPlacement(order_id=placement.order_id, customer_id=placement.customer_id, order=order)


async def test_refund_before_release_takes_pending_first(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup_program(program, clock)
    ann = await enrol(program.id, "ann", clock)
    till = checkout(program.id)
    await ledger.adjust(admin(program.id), ledger.Adjustment(customer_id=ann, amount=40, reason="gift"), "g", clock)
    placement = orders.OrderPlacement(order_id="B-1", customer_id=ann, order=basket())
    await orders.place_order(till, program.shop_id, placement, clock)

    half = await orders.refund_order(till, program.shop_id, "B-1", "R-1", Refund(amount=1250), clock)
    assert (half.points, half.from_pending, half.from_available) == (125, 125, 0)
    rest = await orders.refund_order(till, program.shop_id, "B-1", "R-2", Refund(amount=1250), clock)
    assert (rest.points, rest.from_pending, rest.from_available) == (125, 125, 0)
    assert await balances(owner_connection, program.id, ann) == {
        **await balances(owner_connection, program.id, ann),
        "pending": 0,
        "available": 40,  # the gift is untouched
    }
    with pytest.raises(InvalidInput) as over:
        await orders.refund_order(till, program.shop_id, "B-1", "R-3", Refund(amount=1), clock)
    assert over.value.field == "amount"

    clock.advance(timedelta(days=20))
    assert await orders.release_due_orders(program.id, clock) == 1
    view = await orders.get_order(checkout(program.id), program.shop_id, "B-1")
    assert (view.status, view.release_entry_id, view.clawed_back, view.refunded_net) == ("released", None, 250, 2500)
    assert [r.refund_id for r in view.refunds] == ["R-1", "R-2"]
    await ledger_invariants(owner_connection, program.id)


async def test_spent_points_are_forgiven_or_owed_by_the_return_policy(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup_program(program, clock)
    ann = await enrol(program.id, "ann", clock)
    till = checkout(program.id)
    for order_id in ("C-1", "C-2"):
        placement = orders.OrderPlacement(order_id=order_id, customer_id=ann, order=basket())
        await orders.place_order(till, program.shop_id, placement, clock)
    clock.advance(timedelta(days=20))
    assert await orders.release_due_orders(program.id, clock) == 2
    hold = await ledger.hold_points(till, ledger.HoldRequest(customer_id=ann, amount=450), "spend", clock)
    await ledger.capture_hold(till, hold.id, None, "spend-capture", clock)  # 50 left

    forgiven = await orders.refund_order(till, program.shop_id, "C-1", "R-1", Refund(amount=2500), clock)
    assert (forgiven.points, forgiven.from_available, forgiven.owed, forgiven.forgiven) == (250, 50, 0, 200)

    await orders.set_return_settings(program.id, ReturnSettings(window_days=14, policy=ReturnPolicy.ALLOW_NEGATIVE))
    owed = await orders.refund_order(till, program.shop_id, "C-2", "R-1", Refund(amount=2500), clock)
    assert (owed.points, owed.from_available, owed.owed, owed.forgiven) == (250, 0, 250, 0)
    assert owed.entry_id is not None
    assert await entry_postings(owner_connection, program.id, owed.entry_id) == [
        (f"customer:{ann}:owed", -250, -250),
        ("system:issued", 250, None),
    ]

    # the debt is settled from the next points that become available
    placement = orders.OrderPlacement(order_id="C-3", customer_id=ann, order=basket(clock.now()))
    await orders.place_order(till, program.shop_id, placement, clock)
    clock.advance(timedelta(days=20))
    assert await orders.release_due_orders(program.id, clock) == 1
    view = await orders.get_order(checkout(program.id), program.shop_id, "C-3")
    assert view.release_entry_id is not None
    assert await entry_postings(owner_connection, program.id, view.release_entry_id) == [
        (f"customer:{ann}:pending", -250, 0),
        (f"customer:{ann}:owed", 250, 0),
    ]
    await ledger_invariants(owner_connection, program.id)


async def test_orders_refuse_what_does_not_exist_and_the_future(program: ProgramFixture, clock: ManualClock) -> None:
    await setup_program(program, clock)
    ann = await enrol(program.id, "ann", clock)
    till = checkout(program.id)
    with pytest.raises(NotFound) as no_shop:
        await orders.place_order(
            till, "shp_nope", orders.OrderPlacement(order_id="X", customer_id=ann, order=basket()), clock
        )
    assert no_shop.value.field == "shop_id"
    with pytest.raises(NotFound) as no_customer:
        await orders.place_order(
            till, program.shop_id, orders.OrderPlacement(order_id="Y", customer_id="cus_nope", order=basket()), clock
        )
    assert no_customer.value.field == "customer_id"
    future = orders.OrderPlacement(order_id="Z", customer_id=ann, order=basket(START + timedelta(hours=1)))
    with pytest.raises(InvalidInput) as ahead:
        await orders.place_order(till, program.shop_id, future, clock)
    assert ahead.value.field == "placed_at"
    with pytest.raises(NotFound):
        await orders.refund_order(till, program.shop_id, "nope", "R", Refund(amount=1), clock)


async def test_an_order_at_2330_local_on_the_last_day_of_the_month(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """23:30 in Amsterdam on 31 March is 21:30 UTC: the campaign's last day, March's points."""
    campaign = {"name": "march", "starts_on": "2026-03-01", "ends_on": "2026-03-31", "bonus_points": 7}
    await setup_program(program, clock, campaigns=(campaign,))
    await ledger.set_expiry_rule(program.id, ExpiryRule(ExpiryPolicy.END_OF_MONTH, 0))
    ann = await enrol(program.id, "ann", clock)
    till = checkout(program.id)
    late = datetime(2026, 3, 31, 21, 30, tzinfo=UTC)
    clock.set(late + timedelta(minutes=1))
    placed = await orders.place_order(
        till, program.shop_id, orders.OrderPlacement(order_id="M-1", customer_id=ann, order=basket(late)), clock
    )
    assert [(c.rule, c.points) for c in placed.breakdown] == [("base", 250), ("campaign-bonus:march", 7)]
    assert placed.available_from == datetime(2026, 4, 14, 22, 0, tzinfo=UTC)  # 15 April 00:00 CEST
    expiry = await owner_connection.fetchval(
        "SELECT expires_at FROM lots WHERE program_id = $1 AND entry_id = $2", program.id, placed.award_entry_id
    )
    # end of month counted from when the points can be spent (15 April), not from the
    # purchase: counted from 31 March they expired at its end, two weeks before release
    assert expiry == datetime(2026, 4, 30, 22, 0, tzinfo=UTC)  # the end of April, local

    after = datetime(2026, 3, 31, 22, 30, tzinfo=UTC)  # 00:30 on 1 April: no campaign
    clock.set(after + timedelta(minutes=1))
    next_day = await orders.place_order(
        till, program.shop_id, orders.OrderPlacement(order_id="M-2", customer_id=ann, order=basket(after)), clock
    )
    assert [(c.rule, c.points) for c in next_day.breakdown] == [("base", 250)]


async def test_concurrent_submissions_of_one_order_and_one_refund_act_once(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup_program(program, clock)
    ann = await enrol(program.id, "ann", clock)
    till = checkout(program.id)
    placement = orders.OrderPlacement(order_id="D-1", customer_id=ann, order=basket())
    views = await asyncio.gather(*(orders.place_order(till, program.shop_id, placement, clock) for _ in range(20)))
    assert len({view.award_entry_id for view in views}) == 1
    refund = Refund(amount=1000)
    refunds = await asyncio.gather(
        *(orders.refund_order(till, program.shop_id, "D-1", "R-1", refund, clock) for _ in range(20))
    )
    assert len({r.entry_id for r in refunds}) == 1
    entries = await owner_connection.fetchval(
        "SELECT count(*) FROM entries WHERE program_id = $1 AND kind LIKE 'order.%'", program.id
    )
    assert entries == 2
    assert (await balances(owner_connection, program.id, ann))["pending"] == 150
    await ledger_invariants(owner_connection, program.id)


async def test_campaign_cap_per_customer_counts_earlier_orders_even_concurrently(
    program: ProgramFixture, clock: ManualClock
) -> None:
    campaign = {"name": "spring", "starts_on": "2026-03-01", "ends_on": "2026-03-31", "bonus_points": 30}
    await setup_program(program, clock, campaigns=({**campaign, "customer_cap": 70},))
    ann = await enrol(program.id, "ann", clock)
    till = checkout(program.id)
    views = await asyncio.gather(
        *(
            orders.place_order(
                till, program.shop_id, orders.OrderPlacement(order_id=f"E-{n}", customer_id=ann, order=basket()), clock
            )
            for n in range(5)
        )
    )
    bonus = sorted(sum(c.points for c in view.breakdown if c.rule.startswith("campaign")) for view in views)
    assert bonus == [0, 0, 10, 30, 30]


def campaign_bonus(view: orders.OrderView) -> int:
    return sum(c.points for c in view.breakdown if c.rule.startswith("campaign"))


async def test_refunds_give_back_the_campaign_cap_their_bonus_used(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    campaign = {"name": "spring", "starts_on": "2026-03-01", "ends_on": "2026-03-31", "bonus_points": 30}
    await setup_program(program, clock, campaigns=({**campaign, "customer_cap": 60},))
    ann = await enrol(program.id, "ann", clock)
    till = checkout(program.id)

    async def place(order_id: str) -> int:
        placement = orders.OrderPlacement(order_id=order_id, customer_id=ann, order=basket())
        return campaign_bonus(await orders.place_order(till, program.shop_id, placement, clock))

    async def refund(order_id: str, amount: int) -> int:
        view = await orders.refund_order(till, program.shop_id, order_id, f"R-{order_id}", Refund(amount=amount), clock)
        return view.points

    assert [await place("A"), await place("B"), await place("C")] == [30, 30, 0]  # the cap of 60 is used
    assert await refund("A", 2500) == 280  # the whole order: its 30 of bonus no longer count
    assert await place("D") == 30
    # 1000 of 2500 back takes floor(280 * 0.4) = 112 points and floor(30 * 0.4) = 12 of B's bonus
    assert await refund("B", 1000) == 112
    assert await place("E") == 12
    # 2499 of 2500 back takes floor(12 * 2499 / 2500) = 11 of E's bonus of 12: 1 is kept
    assert await refund("E", 2499) == 261  # floor(262 * 2499 / 2500)
    assert await place("F") == 11
    assert await place("G") == 0  # kept: B 18, D 30, E 1, F 11 = 60
    await ledger_invariants(owner_connection, program.id)


async def test_release_workers_running_at_once_release_each_order_once(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup_program(program, clock)
    till = checkout(program.id)
    customers = [await enrol(program.id, f"r{n}", clock) for n in range(4)]
    for n in range(12):
        placement = orders.OrderPlacement(order_id=f"F-{n}", customer_id=customers[n % 4], order=basket())
        await orders.place_order(till, program.shop_id, placement, clock)
    clock.advance(timedelta(days=20))
    counts = await asyncio.gather(*(orders.release_due_orders(program.id, clock) for _ in range(4)))
    assert sum(counts) == 12
    releases = await owner_connection.fetchval(
        "SELECT count(*) FROM entries WHERE program_id = $1 AND kind = 'order.release'", program.id
    )
    assert releases == 12
    for customer in customers:
        assert (await balances(owner_connection, program.id, customer))["available"] == 750
    await ledger_invariants(owner_connection, program.id)


async def test_concurrent_captures_of_one_redemption_capture_once(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    ann = await enrol(program.id, "ann", clock)
    till = checkout(program.id)
    await ledger.adjust(admin(program.id), ledger.Adjustment(customer_id=ann, amount=100, reason="gift"), "g", clock)
    hold = await ledger.hold_points(till, ledger.HoldRequest(customer_id=ann, amount=80), "redeem", clock)
    same = await asyncio.gather(*(ledger.capture_hold(till, hold.id, 50, "capture", clock) for _ in range(20)))
    assert len({h.resolve_entry_id for h in same}) == 1
    assert await balances(owner_connection, program.id, ann) == {
        **await balances(owner_connection, program.id, ann),
        "available": 50,
        "held": 0,
    }


async def test_a_failing_job_does_not_stop_the_others(
    program: ProgramFixture, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(program_id: str, clock: ManualClock) -> int:
        raise RuntimeError("the release job is broken")

    await setup_program(program, clock)
    await enrol(program.id, "ann", clock)
    monkeypatch.setattr(orders, "release_due_orders", broken)
    report = await jobs.run_program_jobs(program.id, clock)
    assert report.failed == ["orders_released"]
    assert report.events_published >= 1  # the enrolment's event still went out
