"""Earning rules: each rule kind with exact numbers, rounding, campaign windows, caps, refunds."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.earning import (
    MAX_AWARD_POINTS,
    NEUTRAL_BP,
    Award,
    AwardComponent,
    Campaign,
    EarningRules,
    Order,
    OrderLine,
    Refund,
    RefundLine,
    bonus_kept,
    calculate_award,
    claw_back,
)
from service.domain.errors import InvalidInput

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
JUNE = datetime(2026, 6, 15, 10, tzinfo=UTC)
RULES = EarningRules(
    version=1,
    effective_from=datetime(2026, 1, 1, tzinfo=UTC),
    currency="EUR",
    points_per_unit=1,
    unit_minor=100,  # 1 point per euro
)
COFFEE = OrderLine(sku="espresso", category="coffee", unit_price=1250, quantity=2)
TEA = OrderLine(sku="green", category="tea", unit_price=399, quantity=1)
DOUBLE_COFFEE = Campaign(
    name="double-coffee",
    starts_on=date(2026, 6, 1),
    ends_on=date(2026, 6, 30),
    categories=frozenset({"coffee"}),
    multiplier_bp=20_000,
)
WELCOME = Campaign(name="welcome", starts_on=date(2026, 6, 1), ends_on=date(2026, 6, 30), bonus_points=50)


def order(*lines: OrderLine, placed_at: datetime = JUNE) -> Order:
    return Order(currency="EUR", placed_at=placed_at, lines=lines or (COFFEE, TEA))


def rules(**changes: Any) -> EarningRules:
    return msgspec.structs.replace(RULES, **changes)


def award(the_order: Order | None = None, the_rules: EarningRules = RULES, **options: Any) -> Award:
    return calculate_award(the_order or order(), the_rules, zone=AMSTERDAM, **options)


def parts(result: Award) -> list[tuple[str, int]]:
    return [(component.rule, component.points) for component in result.breakdown]


# --- Each rule kind ---------------------------------------------------------------------


def test_base_rate_on_net_value() -> None:
    result = award()  # 25.00 + 3.99 euros
    assert result.total == 28
    assert parts(result) == [("base", 28)]
    assert result.campaign_bonus == {}
    assert result.rules_version == 1


def test_discount_lowers_the_line_net() -> None:
    discounted = msgspec.structs.replace(COFFEE, discount=300)
    assert award(order(discounted)).total == 22


def test_every_rule_kind_stacks_in_order() -> None:
    stacked = rules(category_multipliers={"coffee": 15_000}, campaigns=(DOUBLE_COFFEE, WELCOME))
    result = award(the_rules=stacked, tier_multiplier_bp=12_500)
    # coffee 25 x1.5 x1.25 x2 = 93.75, tea 3.99 x1.25 = 4.9875: 98.7375 rounds down to 98, +50
    assert parts(result) == [
        ("base", 28),  # floor(28.99)
        ("category:coffee", 13),  # floor(41.49) - 28
        ("tier", 10),  # floor(51.8625) - 41
        ("campaign:double-coffee", 47),  # floor(98.7375) - 51
        ("campaign-bonus:welcome", 50),
    ]
    assert result.total == 148
    assert result.campaign_bonus == {"double-coffee": 47, "welcome": 50}
    assert result.breakdown[1] == AwardComponent("category:coffee", 13, "x1.5 on coffee")


def test_a_multiplier_below_one_has_a_negative_part() -> None:
    gift_card = OrderLine(sku="gift", category="gift-card", unit_price=5000, quantity=1)
    result = award(order(gift_card, TEA), rules(category_multipliers={"gift-card": 0}))
    assert parts(result) == [("base", 53), ("category:gift-card", -50)]
    assert result.total == 3


def test_neutral_multipliers_and_untouched_campaigns_are_left_out() -> None:
    only_tea = Campaign(
        name="tea", starts_on=date(2026, 6, 1), ends_on=date(2026, 6, 30), categories=frozenset({"tea"})
    )
    result = award(
        order(COFFEE),
        rules(
            category_multipliers={"coffee": NEUTRAL_BP},
            campaigns=(msgspec.structs.replace(only_tea, multiplier_bp=30_000),),
        ),
    )
    assert parts(result) == [("base", 25)]


def test_a_bonus_needs_a_paid_line_in_its_categories() -> None:
    tea_bonus = msgspec.structs.replace(WELCOME, categories=frozenset({"tea"}))
    free_tea = msgspec.structs.replace(TEA, discount=399)
    assert award(order(COFFEE), rules(campaigns=(tea_bonus,))).total == 25
    assert award(order(COFFEE, free_tea), rules(campaigns=(tea_bonus,))).total == 25
    assert award(order(COFFEE, TEA), rules(campaigns=(tea_bonus,))).total == 78


# --- Rounding -----------------------------------------------------------------------------


@pytest.mark.parametrize(("cents", "points"), [(0, 0), (99, 0), (100, 1), (199, 1), (200, 2)])
def test_rounds_down(cents: int, points: int) -> None:
    assert award(order(OrderLine(sku="x", category="misc", unit_price=cents, quantity=1))).total == points


def test_rounds_once_for_the_order_not_per_line() -> None:
    half = OrderLine(sku="x", category="misc", unit_price=150, quantity=1)
    assert award(order(half, half)).total == 3  # per-line rounding would give 2
    third = OrderLine(sku="y", category="misc", unit_price=100, quantity=1)
    per_three_euros = rules(unit_minor=300)
    assert award(order(third, third, third), per_three_euros).total == 1
    assert award(order(msgspec.structs.replace(third, unit_price=299)), per_three_euros).total == 0


def test_multipliers_are_exact() -> None:
    hundred = OrderLine(sku="x", category="misc", unit_price=10_000, quantity=1)
    assert math.floor(100 * 1.15) == 114  # what floats would do
    assert award(order(hundred), rules(category_multipliers={"misc": 11_500})).total == 115


def test_the_rounding_remainder_is_shared_between_stages() -> None:
    one_fifty = OrderLine(sku="x", category="coffee", unit_price=150, quantity=1)
    result = award(order(one_fifty), rules(category_multipliers={"coffee": 15_000}), tier_multiplier_bp=15_000)
    # 1.5 -> 2.25 -> 3.375: floors 1, 2, 3
    assert parts(result) == [("base", 1), ("category:coffee", 1), ("tier", 1)]
    assert result.total == 3


# --- Campaign windows in local time --------------------------------------------------------


def autumn(starts_on: date, ends_on: date) -> EarningRules:
    return rules(campaigns=(Campaign(name="autumn", starts_on=starts_on, ends_on=ends_on, bonus_points=10),))


@pytest.mark.parametrize(
    ("placed_at", "local", "starts_on", "ends_on", "counts"),
    [
        # the Saturday before the clock change, summer time (UTC+2)
        (datetime(2026, 10, 24, 21, 30, tzinfo=UTC), "2026-10-24 23:30", date(2026, 10, 1), date(2026, 10, 24), True),
        (datetime(2026, 10, 24, 22, 30, tzinfo=UTC), "2026-10-25 00:30", date(2026, 10, 1), date(2026, 10, 24), False),
        # the last Sunday of October: clocks went back at 03:00, now winter time (UTC+1)
        (datetime(2026, 10, 25, 22, 30, tzinfo=UTC), "2026-10-25 23:30", date(2026, 10, 1), date(2026, 10, 25), True),
        (datetime(2026, 10, 25, 23, 30, tzinfo=UTC), "2026-10-26 00:30", date(2026, 10, 1), date(2026, 10, 25), False),
        # the first day counts from local midnight
        (datetime(2026, 10, 25, 23, 30, tzinfo=UTC), "2026-10-26 00:30", date(2026, 10, 26), date(2026, 10, 31), True),
        (datetime(2026, 10, 25, 22, 30, tzinfo=UTC), "2026-10-25 23:30", date(2026, 10, 26), date(2026, 10, 31), False),
    ],
)
def test_campaign_window_is_whole_local_days(
    placed_at: datetime, local: str, starts_on: date, ends_on: date, counts: bool
) -> None:
    assert placed_at.astimezone(AMSTERDAM).strftime("%Y-%m-%d %H:%M") == local
    result = award(order(placed_at=placed_at), autumn(starts_on, ends_on))
    assert parts(result) == [("base", 28), ("campaign-bonus:autumn", 10)][: 2 if counts else 1]


# --- Caps and the minimum -------------------------------------------------------------------


@pytest.mark.parametrize(("so_far", "granted"), [(None, 25), (0, 25), (20, 10), (30, 0), (45, 0)])
def test_per_customer_cap_on_a_multiplier(so_far: int | None, granted: int) -> None:
    capped = rules(campaigns=(msgspec.structs.replace(DOUBLE_COFFEE, customer_cap=30),))
    result = award(the_rules=capped, bonus_so_far=None if so_far is None else {"double-coffee": so_far})
    assert parts(result) == [("base", 28), ("campaign:double-coffee", granted)]  # uncapped: floor(53.99) - 28
    assert result.total == 28 + granted
    assert result.campaign_bonus == {"double-coffee": granted}
    assert ("capped at 30 per customer" in result.breakdown[1].detail) == (granted < 25)


def test_per_customer_cap_on_a_bonus() -> None:
    capped = rules(campaigns=(msgspec.structs.replace(WELCOME, customer_cap=120),))
    result = award(the_rules=capped, bonus_so_far={"welcome": 100, "other": 7})
    assert parts(result) == [("base", 28), ("campaign-bonus:welcome", 20)]
    assert result.campaign_bonus == {"welcome": 20}


@pytest.mark.parametrize(
    ("refunded", "kept"),
    [(0, 30), (1, 30), (83, 30), (84, 29), (1250, 15), (2499, 1), (2500, 0)],
)
def test_a_refund_frees_the_share_of_a_campaign_bonus_it_claws_back(refunded: int, kept: int) -> None:
    assert bonus_kept(30, refunded, 2500) == kept  # takes back floor(30 * refunded / 2500), all of it at the end


@pytest.mark.parametrize(("minimum", "total"), [(2900, 0), (2899, 78)])
def test_minimum_order_value(minimum: int, total: int) -> None:
    result = award(the_rules=rules(minimum_order_minor=minimum, campaigns=(WELCOME,)))
    assert result.total == total
    if total == 0:
        assert result.breakdown == (AwardComponent("minimum-order", 0, "order net 2899 is below the minimum of 2900"),)
        assert result.campaign_bonus == {}


def test_order_cap_is_charged_to_the_last_campaign_first() -> None:
    capped = rules(category_multipliers={"coffee": 15_000}, campaigns=(DOUBLE_COFFEE, WELCOME), order_cap=100)
    result = award(the_rules=capped, tier_multiplier_bp=12_500)
    assert parts(result)[-1] == ("order-cap", -48)
    assert result.total == 100 == sum(points for _, points in parts(result))
    assert result.campaign_bonus == {"double-coffee": 47, "welcome": 2}
    deeper = award(the_rules=rules(campaigns=(DOUBLE_COFFEE, WELCOME), order_cap=20))
    assert deeper.total == 20
    assert deeper.campaign_bonus == {"double-coffee": 0, "welcome": 0}


def test_order_cap_not_reached_leaves_no_component() -> None:
    assert parts(award(the_rules=rules(order_cap=28))) == [("base", 28)]


# --- Validation ---------------------------------------------------------------------------


def bad_line(**changes: Any) -> Order:
    return order(COFFEE, TEA, msgspec.structs.replace(TEA, **changes))


@pytest.mark.parametrize(
    ("the_order", "the_rules", "options", "field"),
    [
        (bad_line(quantity=0), RULES, {}, "lines[2].quantity"),
        (bad_line(quantity=True), RULES, {}, "lines[2].quantity"),
        (bad_line(unit_price=-1), RULES, {}, "lines[2].unit_price"),
        (bad_line(discount=400), RULES, {}, "lines[2].discount"),
        (bad_line(category=""), RULES, {}, "lines[2].category"),
        (Order(currency="EUR", placed_at=JUNE, lines=()), RULES, {}, "lines"),
        (Order(currency="eur", placed_at=JUNE, lines=(TEA,)), RULES, {}, "currency"),
        (Order(currency="USD", placed_at=JUNE, lines=(TEA,)), RULES, {}, "currency"),
        (order(placed_at=datetime(2026, 6, 15)), RULES, {}, "placed_at"),
        (order(placed_at=datetime(2025, 12, 31, tzinfo=UTC)), RULES, {}, "placed_at"),
        (order(), rules(unit_minor=0), {}, "unit_minor"),
        (order(), rules(category_multipliers={"coffee": -1}), {}, "category_multipliers['coffee']"),
        (order(), rules(campaigns=(msgspec.structs.replace(WELCOME, multiplier_bp=20_000),)), {}, "campaigns[0]"),
        (order(), rules(campaigns=(msgspec.structs.replace(WELCOME, bonus_points=None),)), {}, "campaigns[0]"),
        (
            order(),
            rules(campaigns=(msgspec.structs.replace(DOUBLE_COFFEE, multiplier_bp=5000),)),
            {},
            "campaigns[0].multiplier_bp",
        ),
        (
            order(),
            rules(campaigns=(msgspec.structs.replace(WELCOME, ends_on=date(2026, 5, 31)),)),
            {},
            "campaigns[0].ends_on",
        ),
        (order(), rules(campaigns=(WELCOME, WELCOME)), {}, "campaigns[1].name"),
        (order(), RULES, {"tier_multiplier_bp": -1}, "tier_multiplier_bp"),
        (order(), RULES, {"bonus_so_far": {"welcome": -1}}, "bonus_so_far['welcome']"),
    ],
)
def test_invalid_input_names_the_field(
    the_order: Order, the_rules: EarningRules, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        calculate_award(the_order, the_rules, zone=AMSTERDAM, **options)
    assert refused.value.field == field


# --- Refunds ------------------------------------------------------------------------------

FULL = award(
    the_rules=rules(campaigns=(DOUBLE_COFFEE, WELCOME), category_multipliers={"coffee": 15_000}),
    tier_multiplier_bp=12_500,
)


def refund_lines(*pairs: tuple[int, int]) -> Refund:
    return Refund(lines=tuple(RefundLine(line=line, quantity=quantity) for line, quantity in pairs))


def test_refund_claws_back_in_proportion_and_in_full_at_the_end() -> None:
    assert FULL.total == 148  # on a net of 2899
    lines = (COFFEE, TEA)
    assert claw_back(lines, FULL, refund_lines((1, 1))).points == 20  # floor(148 * 399 / 2899)
    first = claw_back(lines, FULL, refund_lines((0, 1)))
    assert (first.points, first.refunded_net, first.order_net) == (63, 1250, 2899)  # floor(63.8)
    history = [refund_lines((0, 1))]
    assert claw_back(lines, FULL, refund_lines((0, 1)), history).points == 64  # 127 - 63
    history.append(refund_lines((0, 1)))
    assert claw_back(lines, FULL, refund_lines((1, 1)), history).points == 21  # 148 - 127
    assert claw_back(lines, FULL, Refund(amount=2899)).points == 148
    assert claw_back(lines, FULL, refund_lines((0, 2), (1, 1))).points == 148


def test_a_discounted_line_refunds_its_value_rounded_down_until_all_is_back() -> None:
    line = OrderLine(sku="x", category="misc", unit_price=1000, quantity=3, discount=1)  # net 2999
    result = award(order(line))
    assert result.total == 29
    first = claw_back((line,), result, refund_lines((0, 1)))
    assert (first.points, first.refunded_net) == (9, 999)  # floor(29 * 999 / 2999)
    rest = claw_back((line,), result, refund_lines((0, 2)), [refund_lines((0, 1))])
    assert (rest.points, rest.refunded_net) == (20, 2999)


@pytest.mark.parametrize(
    ("refund", "previous", "field"),
    [
        (refund_lines((0, 3)), [], "lines[0].quantity"),
        (refund_lines((1, 1), (0, 1)), [refund_lines((0, 2))], "lines[1].quantity"),
        (refund_lines((2, 1)), [], "lines[0].line"),
        (refund_lines((0, 0)), [], "lines[0].quantity"),
        (Refund(amount=2900), [], "amount"),
        (Refund(amount=400), [Refund(amount=2500)], "amount"),
        (refund_lines((1, 1)), [Refund(amount=2899)], "lines"),
        (Refund(), [], "amount"),
        (Refund(amount=1, lines=(RefundLine(line=0, quantity=1),)), [], "amount"),
        (Refund(amount=1), [Refund(amount=0)], "previous[0].amount"),
    ],
)
def test_refunding_more_than_was_bought_names_the_field(refund: Refund, previous: list[Refund], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        claw_back((COFFEE, TEA), FULL, refund, previous)
    assert refused.value.field == field


# --- Properties ---------------------------------------------------------------------------

CATEGORIES = ("coffee", "tea", "food", "gift-card")
DAY_ONE = date(2026, 1, 1)


@st.composite
def orders(draw: st.DrawFn) -> Order:
    lines = []
    for index in range(draw(st.integers(1, 5))):
        price, quantity = draw(st.integers(0, 100_000)), draw(st.integers(1, 20))
        lines.append(
            OrderLine(
                sku=f"sku-{index}",
                category=draw(st.sampled_from(CATEGORIES)),
                unit_price=price,
                quantity=quantity,
                discount=draw(st.integers(0, price * quantity)),
            )
        )
    placed = draw(st.datetimes(datetime(2026, 1, 2), datetime(2026, 12, 30), timezones=st.just(UTC)))
    return Order(currency="EUR", placed_at=placed, lines=tuple(lines))


@st.composite
def campaigns(draw: st.DrawFn, name: str) -> Campaign:
    starts_on = DAY_ONE + timedelta(days=draw(st.integers(0, 364)))
    return Campaign(
        name=name,
        starts_on=starts_on,
        ends_on=starts_on + timedelta(days=draw(st.integers(0, 120))),
        categories=draw(st.none() | st.frozensets(st.sampled_from(CATEGORIES), min_size=1)),
        customer_cap=draw(st.none() | st.integers(0, 300)),
        **draw(
            st.fixed_dictionaries({"multiplier_bp": st.integers(NEUTRAL_BP + 1, 40_000)})
            | st.fixed_dictionaries({"bonus_points": st.integers(1, 500)})
        ),
    )


@st.composite
def rule_sets(draw: st.DrawFn) -> EarningRules:
    count = draw(st.integers(0, 3))
    return rules(
        points_per_unit=draw(st.integers(0, 10)),
        unit_minor=draw(st.sampled_from([1, 7, 100, 300, 1000])),
        category_multipliers=draw(st.dictionaries(st.sampled_from(CATEGORIES), st.integers(0, 30_000))),
        campaigns=tuple(draw(campaigns(f"c{index}")) for index in range(count)),
        minimum_order_minor=draw(st.integers(0, 5000)),
        order_cap=draw(st.none() | st.integers(0, 5000)),
    )


def ceiling(the_order: Order, the_rules: EarningRules, tier: int) -> int:
    """The most the rules can give: every multiplier at its highest on every line, every bonus."""
    factor = Fraction(max([NEUTRAL_BP, *the_rules.category_multipliers.values()]), NEUTRAL_BP)
    factor *= Fraction(tier, NEUTRAL_BP)
    bonuses = 0
    for campaign in the_rules.campaigns:
        if campaign.multiplier_bp is not None:
            factor *= Fraction(campaign.multiplier_bp, NEUTRAL_BP)
        else:
            bonuses += campaign.bonus_points or 0
    most = math.floor(Fraction(the_order.net * the_rules.points_per_unit, the_rules.unit_minor) * factor) + bonuses
    return most if the_rules.order_cap is None else min(most, the_rules.order_cap)


@settings(max_examples=200, deadline=None)
@given(
    orders(),
    rule_sets(),
    st.integers(0, 20_000),
    st.dictionaries(st.sampled_from(["c0", "c1", "c2"]), st.integers(0, 400)),
)
def test_points_are_bounded_and_explained(
    the_order: Order, the_rules: EarningRules, tier: int, so_far: dict[str, int]
) -> None:
    result = calculate_award(the_order, the_rules, zone=AMSTERDAM, tier_multiplier_bp=tier, bonus_so_far=so_far)
    assert 0 <= result.total <= ceiling(the_order, the_rules, tier)
    assert sum(component.points for component in result.breakdown) == result.total
    caps = {campaign.name: campaign.customer_cap for campaign in the_rules.campaigns}
    for name, granted in result.campaign_bonus.items():
        cap = caps[name]
        assert granted >= 0
        assert cap is None or granted <= max(cap - so_far.get(name, 0), 0)


@settings(max_examples=200, deadline=None)
@given(orders(), rule_sets(), st.data())
def test_refunds_claw_back_exactly_the_award_and_never_more(
    the_order: Order, the_rules: EarningRules, data: st.DataObject
) -> None:
    result = calculate_award(the_order, the_rules, zone=AMSTERDAM)
    lines, net = the_order.lines, the_order.net
    everything = refund_lines(*((index, line.quantity) for index, line in enumerate(lines)))
    assert claw_back(lines, result, everything).points == result.total
    if net:
        assert claw_back(lines, result, Refund(amount=net)).points == result.total

    left = [line.quantity for line in lines]
    history: list[Refund] = []
    taken = 0
    by_amount = data.draw(st.booleans())  # after some lines, refund the rest as money
    while any(left) and not (by_amount and history and data.draw(st.booleans())):
        index = data.draw(st.sampled_from([i for i, quantity in enumerate(left) if quantity]))
        quantity = data.draw(st.integers(1, left[index]))
        left[index] -= quantity
        history.append(refund_lines((index, quantity)))
    refunded = 0
    for position, refund in enumerate(history):
        step = claw_back(lines, result, refund, history[:position])
        taken, refunded = taken + step.points, step.refunded_net
        assert step.points >= 0
        assert taken <= result.total
    while refunded < net:
        money = Refund(amount=data.draw(st.integers(1, net - refunded)))
        step = claw_back(lines, result, money, history)
        history.append(money)
        taken, refunded = taken + step.points, step.refunded_net
        assert step.points >= 0
        assert taken <= result.total
    assert taken == result.total


def exact_multiplied_points(the_order: Order, the_rules: EarningRules, tier: int) -> int:
    """floor of the exact sum over lines of base points times every multiplier that applies."""
    day = the_order.placed_at.astimezone(AMSTERDAM).date()
    total = Fraction(0)
    for line in the_order.lines:
        points = Fraction(line.net * the_rules.points_per_unit, the_rules.unit_minor)
        points *= Fraction(the_rules.category_multipliers.get(line.category, NEUTRAL_BP), NEUTRAL_BP)
        points *= Fraction(tier, NEUTRAL_BP)
        for campaign in the_rules.campaigns:
            active = campaign.starts_on <= day <= campaign.ends_on and campaign.multiplier_bp is not None
            if active and campaign.applies_to(line):
                points *= Fraction(campaign.multiplier_bp or NEUTRAL_BP, NEUTRAL_BP)
        total += points
    return math.floor(total)


@settings(max_examples=300, deadline=None)
@given(orders(), rule_sets(), st.integers(0, 20_000))
def test_multiplied_points_are_the_floor_of_the_exact_product(
    the_order: Order, the_rules: EarningRules, tier: int
) -> None:
    uncapped = msgspec.structs.replace(
        the_rules,
        order_cap=None,
        minimum_order_minor=0,
        campaigns=tuple(msgspec.structs.replace(c, customer_cap=None) for c in the_rules.campaigns),
    )
    result = calculate_award(the_order, uncapped, zone=AMSTERDAM, tier_multiplier_bp=tier)
    multiplied = sum(c.points for c in result.breakdown if not c.rule.startswith("campaign-bonus:"))
    assert multiplied == exact_multiplied_points(the_order, uncapped, tier)


@settings(max_examples=300, deadline=None)
@given(orders(), rule_sets(), st.data())
def test_bonus_kept_follows_the_clawback_and_stays_within_the_bonus(
    the_order: Order, the_rules: EarningRules, data: st.DataObject
) -> None:
    result = calculate_award(the_order, the_rules, zone=AMSTERDAM)
    net = the_order.net
    refunded = data.draw(st.integers(0, net))
    taken = claw_back(the_order.lines, result, Refund(amount=refunded)).points if refunded else 0
    bonus_taken = 0
    for bonus in result.campaign_bonus.values():
        kept = bonus_kept(bonus, refunded, net)
        assert 0 <= kept <= bonus
        assert bonus_kept(bonus, min(refunded + 1, net), net) <= kept  # more refunded, never more kept
        bonus_taken += bonus - kept
    assert bonus_taken <= taken  # a campaign's bonus comes back with the award it was part of


def test_an_award_beyond_what_the_ledger_holds_is_refused_naming_the_lines() -> None:
    """Rules within their bounds can multiply a large order past 64-bit amounts: at most
    MAX_AWARD_POINTS per order, a 422 naming the lines instead of a failed write."""
    big = OrderLine(sku="gold", category="bullion", unit_price=10**12, quantity=1000)  # net 10^15
    generous = rules(points_per_unit=10**6, unit_minor=1)
    with pytest.raises(InvalidInput) as refused:
        award(order(big), generous)
    assert refused.value.field == "lines" and str(MAX_AWARD_POINTS) in refused.value.detail
    at_most = rules(points_per_unit=1, unit_minor=1)  # exactly 10^15 points
    assert award(order(big), at_most).total == MAX_AWARD_POINTS
    capped = rules(points_per_unit=10**6, unit_minor=1, order_cap=500)  # the order cap applies first
    assert award(order(big), capped).total == 500
