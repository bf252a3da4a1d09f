"""Hypothesis over baskets on the real ledger: whatever the prices, quantities and the way
an order is refunded (in parts, by lines or amounts, before or after release), refunding
all of it returns the customer's balances to where they started; and through any sequence
of orders and refunds, a campaign's per-customer cap counts only the bonus kept."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain.access import Principal, Scope
from service.domain.clock import ManualClock
from service.domain.earning import (
    Campaign,
    EarningRules,
    Order,
    OrderLine,
    Refund,
    RefundLine,
    bonus_kept,
    calculate_award,
)
from service.usecases import ledger, orders
from service.usecases.earning_rules import RulesDraft, publish_rules
from tests.conftest import ProgramFixture, make_program
from tests.integration.ledger_helpers import admin, balances, enrol, ledger_invariants

PLACED = datetime(2026, 4, 2, 10, 0, tzinfo=UTC)
_serial = itertools.count()

lines_strategy = st.lists(
    st.builds(
        lambda price, quantity, category: OrderLine(
            sku=f"sku-{price}", category=category, unit_price=price, quantity=quantity
        ),
        st.integers(0, 50_000),
        st.integers(1, 5),
        st.sampled_from(["coffee", "tea", "cups"]),
    ),
    min_size=1,
    max_size=4,
)


@st.composite
def refund_plans(draw: st.DrawFn, lines: list[OrderLine]) -> list[Refund]:
    """Refunds that together give back the whole order, by lines or by amounts."""
    net = sum(line.net for line in lines)
    if draw(st.booleans()) or net == 0:
        units = [(index, 1) for index, line in enumerate(lines) for _ in range(line.quantity)]
        cuts = sorted(draw(st.lists(st.integers(1, len(units)), max_size=2, unique=True)))
        parts = [units[a:b] for a, b in itertools.pairwise([0, *cuts, len(units)]) if units[a:b]]
        return [Refund(lines=tuple(RefundLine(line=i, quantity=q) for i, q in part)) for part in parts]
    cuts = sorted(draw(st.lists(st.integers(1, net), max_size=2, unique=True)))
    bounds = [0, *cuts, net]
    return [Refund(amount=b - a) for a, b in itertools.pairwise(bounds) if b > a]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), lines=lines_strategy, release_first=st.booleans(), gift=st.integers(0, 300))
async def test_refunding_everything_returns_the_customer_to_where_they_started(
    data: st.DataObject,
    lines: list[OrderLine],
    release_first: bool,
    gift: int,
    program_with_rules: ProgramFixture,
    clock: ManualClock,
    owner_connection: asyncpg.Connection,
) -> None:
    program = program_with_rules
    clock.set(PLACED)
    customer = await enrol(program.id, f"c{next(_serial)}", clock)
    if gift:
        grant = ledger.Adjustment(customer_id=customer, amount=gift, reason="gift")
        await ledger.adjust(admin(program.id), grant, f"gift-{customer}", clock)
    start = await balances(owner_connection, program.id, customer)

    till = Principal(program_id=program.id, scope=Scope.CHECKOUT, key_id="key_till")
    order = Order(currency="EUR", placed_at=PLACED, lines=tuple(lines))
    placement = orders.OrderPlacement(order_id=f"o-{customer}", customer_id=customer, order=order)
    placed = await orders.place_order(till, program.shop_id, placement, clock)
    assert 0 <= placed.points <= placed.net * 3  # x3 on coffee is the rules' largest multiplier
    if release_first:
        clock.set(placed.available_from)
        await orders.release_due_orders(program.id, clock)

    plan = data.draw(refund_plans(lines))
    taken = 0
    for number, refund in enumerate(plan):
        view = await orders.refund_order(till, program.shop_id, placement.order_id, f"r{number}", refund, clock)
        assert view.points >= 0 and view.forgiven == 0 and view.owed == 0
        taken += view.points
    assert taken == placed.points
    clock.set(placed.available_from + timedelta(days=1))
    await orders.release_due_orders(program.id, clock)
    assert await balances(owner_connection, program.id, customer) == start
    await ledger_invariants(owner_connection, program.id)


@pytest.fixture
async def program_with_rules(database: str, clock: ManualClock) -> ProgramFixture:
    """One program for every example (each example enrols its own customer)."""
    program = await make_program()
    clock.set(PLACED - timedelta(days=1))
    draft = msgspec.convert(
        {"currency": "EUR", "points_per_unit": 7, "unit_minor": 300, "category_multipliers": {"coffee": 30000}},
        RulesDraft,
    )
    await publish_rules(admin(program.id), draft, "rules", clock)
    return program


CAMPAIGNS = (
    Campaign(
        name="double-tea",
        starts_on=date(2026, 4, 1),
        ends_on=date(2026, 4, 30),
        categories=frozenset({"tea"}),
        multiplier_bp=20_000,
        customer_cap=150,
    ),
    Campaign(name="welcome", starts_on=date(2026, 4, 1), ends_on=date(2026, 4, 30), bonus_points=25, customer_cap=60),
)


@pytest.fixture
async def program_with_capped_campaigns(database: str, clock: ManualClock) -> tuple[ProgramFixture, EarningRules]:
    program = await make_program()
    clock.set(PLACED - timedelta(days=1))
    draft = RulesDraft(currency="EUR", points_per_unit=7, unit_minor=300, campaigns=CAMPAIGNS)
    published = await publish_rules(admin(program.id), draft, "rules", clock)
    return program, published.rules


steps = st.lists(st.one_of(lines_strategy, st.integers(0, 7)), min_size=1, max_size=8)  # an order, or a refund


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), plan=steps)
async def test_campaign_caps_count_only_the_bonus_kept_through_orders_and_refunds(
    data: st.DataObject,
    plan: list[list[OrderLine] | int],
    program_with_capped_campaigns: tuple[ProgramFixture, EarningRules],
    clock: ManualClock,
) -> None:
    program, rules = program_with_capped_campaigns
    clock.set(PLACED)
    customer = await enrol(program.id, f"c{next(_serial)}", clock)
    till = Principal(program_id=program.id, scope=Scope.CHECKOUT, key_id="key_till")
    caps = {campaign.name: campaign.customer_cap or 0 for campaign in CAMPAIGNS}
    placed: list[tuple[str, int, dict[str, int]]] = []  # order id, net, bonus granted per campaign
    refunded: dict[str, int] = {}

    def kept() -> dict[str, int]:
        totals = dict.fromkeys(caps, 0)
        for order_id, net, granted in placed:
            for name, bonus in granted.items():
                totals[name] += bonus_kept(bonus, refunded.get(order_id, 0), net)
        return totals

    for number, step in enumerate(plan):
        if isinstance(step, list):
            order = Order(currency="EUR", placed_at=PLACED, lines=tuple(step))
            expected = calculate_award(order, rules, zone=ZoneInfo("Europe/Amsterdam"), bonus_so_far=kept())
            order_id = f"o{number}-{customer}"
            placement = orders.OrderPlacement(order_id=order_id, customer_id=customer, order=order)
            placed_view = await orders.place_order(till, program.shop_id, placement, clock)
            assert placed_view.points == expected.total and placed_view.breakdown == expected.breakdown
            placed.append((order_id, order.net, expected.campaign_bonus))
        elif placed:
            order_id, net, _ = placed[step % len(placed)]
            left = net - refunded.get(order_id, 0)
            if left == 0:
                continue
            amount = data.draw(st.integers(1, left))
            refund = Refund(amount=amount)
            refund_view = await orders.refund_order(till, program.shop_id, order_id, f"r{number}", refund, clock)
            assert refund_view.refunded_net == refunded.get(order_id, 0) + amount
            refunded[order_id] = refund_view.refunded_net
        for name, total in kept().items():
            assert 0 <= total <= caps[name]
