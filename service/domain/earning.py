"""Earning rules: the points an order earns, and the points a refund takes back.

Rounding, stated once. Each line's base points are an exact fraction: its net value times
points_per_unit / unit_minor. Multipliers (category, then tier, then each active multiplier
campaign that applies to the line) multiply those fractions exactly; the lines are summed
exactly and the multiplied total is rounded down once, for the whole order. Fixed campaign
bonuses are added after that rounding, and the per-order cap applies last. Points are never
negative.

The breakdown adds up to the total exactly: base is floor(base sum), and each multiplier
gets floor(sum after it) - floor(sum before it), so the single floor's remainder is shared
out between the stages. A multiplier below 1x has a negative part.

Caps. A campaign's per-customer cap trims only that campaign's own part (later multipliers
still count on the untrimmed amount). The per-order cap trims the total; when reporting
what each campaign granted, the cut is charged to campaigns last-applied first. What counts
against a per-customer cap is the bonus the customer kept (`bonus_kept`): a refund takes
back the same share of each campaign's bonus as it takes of the whole award, rounded the
same way, so refunding an order frees the cap its bonus used (all of it when the whole
order comes back), and the bonus kept never exceeds the cap.

Refunds claw back in proportion to refunded net value, cumulatively: with
claw(x) = floor(total * x / net) and claw(net) = total (`share_taken`), a refund takes
claw(refunded after it) - claw(refunded before it). Partial refunds therefore never take
more than the award in sum, and refunding everything takes exactly all of it. The same
rule gives back the points a captured hold paid for the order (`Clawback.share` of the
redeemed amount), so there is one rounding rule for everything a refund moves. An order of
net value 0 (free items, perhaps paid with points) is measured in items instead: the items
returned of those bought.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from typing import Annotated, TypeVar
from zoneinfo import ZoneInfo

import msgspec

from service.domain.errors import InvalidInput
from service.domain.patterns import END

NEUTRAL_BP = 10_000  # basis points of a 1x multiplier

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]  # no NUL
Currency = Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}" + END)]
Minor = Annotated[int, msgspec.Meta(ge=0)]
Points = Annotated[int, msgspec.Meta(ge=0)]
BasisPoints = Annotated[int, msgspec.Meta(ge=0)]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


MAX_UNIT_PRICE = 10**12  # minor units
MAX_QUANTITY = 10**6
MAX_ORDER_NET = 10**15  # minor units: sums of many orders still fit 64-bit columns
MAX_LEVEL = 10**6  # a product's level within its category (upsell: a later purchase at a higher one)
MAX_ORDER_LINES = 500  # an order's award costs work per line and per multiplier (lines x multipliers)
# A rules version is read for every order and quote, and each multiplier campaign is a pass over
# the order's lines: what a version may hold is bounded where it is published (the stored
# versions are read as they are, whatever they hold).
MAX_CAMPAIGNS = 100
MAX_CAMPAIGN_CATEGORIES = 100  # categories one campaign names
MAX_CATEGORY_MULTIPLIERS = 1000
MAX_MULTIPLIER_BP = 100 * NEUTRAL_BP  # 100x, as a tier's earn multiplier
MAX_RULE_POINTS = 10**12  # a bonus or a cap, as an adjustment's amount
MAX_POINTS_PER_UNIT = 10**6
# What one order may earn, as its net value: rules within their bounds can multiply a large
# order past what the ledger's 64-bit amounts hold; 9,000 such awards still fit one balance.
MAX_AWARD_POINTS = 10**15


class OrderLine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sku: Text
    category: Text
    unit_price: Annotated[int, msgspec.Meta(ge=0, le=MAX_UNIT_PRICE)]
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)]
    discount: Minor = 0  # for the whole line, at most unit_price * quantity
    level: Annotated[int, msgspec.Meta(ge=0, le=MAX_LEVEL)] | None = None

    @property
    def net(self) -> int:
        return self.unit_price * self.quantity - self.discount


# the lines of an order, placed or quoted
OrderLines = Annotated[tuple[OrderLine, ...], msgspec.Meta(min_length=1, max_length=MAX_ORDER_LINES)]


class Order(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    currency: Currency
    placed_at: AwareDatetime
    lines: OrderLines

    @property
    def net(self) -> int:
        return sum(line.net for line in self.lines)


class Campaign(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A promotion over whole local days that multiplies points or adds a fixed bonus."""

    name: Text
    starts_on: date
    ends_on: date  # inclusive, in the program's time zone
    categories: frozenset[Text] | None = None  # None: every line
    multiplier_bp: Annotated[int, msgspec.Meta(gt=NEUTRAL_BP)] | None = None
    bonus_points: Annotated[int, msgspec.Meta(gt=0)] | None = None  # once per order
    customer_cap: Points | None = None  # bonus points one customer gets from it in total

    def applies_to(self, line: OrderLine) -> bool:
        return self.categories is None or line.category in self.categories

    def describe(self) -> str:
        lines = "all lines" if self.categories is None else ", ".join(sorted(self.categories))
        return f"{lines}, {self.starts_on} to {self.ends_on}"


class EarningRules(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One version of a program's earning rules, in force from effective_from."""

    version: Annotated[int, msgspec.Meta(ge=1)]
    effective_from: AwareDatetime
    currency: Currency
    points_per_unit: Points
    unit_minor: Annotated[int, msgspec.Meta(gt=0)]  # points_per_unit per this many minor units
    category_multipliers: dict[Text, BasisPoints] = {}
    campaigns: tuple[Campaign, ...] = ()
    minimum_order_minor: Minor = 0
    order_cap: Points | None = None


class AwardComponent(msgspec.Struct, frozen=True):
    """One line of the receipt's explanation."""

    rule: str
    points: int
    detail: str


class Award(msgspec.Struct, frozen=True, kw_only=True):
    """The points an order earns; the breakdown adds up to the total."""

    total: int
    breakdown: tuple[AwardComponent, ...]
    campaign_bonus: dict[str, int]  # points each campaign granted, for per-customer caps
    rules_version: int


class RefundLine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    line: Annotated[int, msgspec.Meta(ge=0)]  # position in the order's lines
    quantity: Annotated[int, msgspec.Meta(ge=1)]


class Refund(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Goods returned by line, or money returned as an amount of net value; not both."""

    lines: tuple[RefundLine, ...] = ()
    amount: Annotated[int, msgspec.Meta(ge=1, le=MAX_ORDER_NET)] | None = None


class Clawback(msgspec.Struct, frozen=True, kw_only=True):
    points: int
    refunded_net: int  # cumulative, this refund included
    order_net: int
    refunded_before: int = 0  # cumulative, before this refund
    # items returned before this refund, after it, and bought: what an order of net value 0
    # (free items, perhaps paid with points) is measured in, having no value to measure
    items: tuple[int, int, int] = (0, 0, 0)

    def share(self, total: int) -> int:
        """This refund's share of an amount that goes with the whole order (its award, the
        points a hold paid for it), by the one rule: cumulative, so the order's refunds
        together take exactly `total` once everything came back."""
        before, after, whole = (
            (self.refunded_before, self.refunded_net, self.order_net) if self.order_net else self.items
        )
        return share_taken(total, after, whole) - share_taken(total, before, whole)


_S = TypeVar("_S", bound=msgspec.Struct)


def _checked(value: _S, prefix: str = "") -> _S:
    """The Struct re-checked against the constraints in its types, which only decoding applies."""
    try:
        return msgspec.convert(msgspec.to_builtins(value), type(value))
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$")
        field = (prefix + where.rstrip("`")).lstrip(".")
        raise InvalidInput(message, field=field or None) from None


def _check_lines(lines: Sequence[OrderLine], prefix: str = "lines") -> None:
    for index, line in enumerate(lines):
        if line.discount > line.unit_price * line.quantity:
            raise InvalidInput("discount exceeds unit_price * quantity", field=f"{prefix}[{index}].discount")


def checked_rules(rules: EarningRules) -> EarningRules:
    """The rule set if it is valid as a whole; InvalidInput naming the first bad field otherwise."""
    for category, bp in rules.category_multipliers.items():
        if type(bp) is not int or bp < 0:
            raise InvalidInput("multipliers are integer basis points >= 0", field=f"category_multipliers[{category!r}]")
    rules = _checked(rules)
    names: set[str] = set()
    for index, campaign in enumerate(rules.campaigns):
        if (campaign.multiplier_bp is None) == (campaign.bonus_points is None):
            raise InvalidInput("a campaign has either multiplier_bp or bonus_points", field=f"campaigns[{index}]")
        if campaign.ends_on < campaign.starts_on:
            raise InvalidInput("ends_on is before starts_on", field=f"campaigns[{index}].ends_on")
        if campaign.name in names:
            raise InvalidInput(f"campaign {campaign.name!r} is defined twice", field=f"campaigns[{index}].name")
        names.add(campaign.name)
    return rules


def _times(bp: int) -> str:
    whole, fraction = divmod(bp, NEUTRAL_BP)
    return f"x{whole}" + (f".{fraction:04d}".rstrip("0") if fraction else "")


def _all(line: OrderLine) -> bool:
    return True


def _in(category: str) -> Callable[[OrderLine], bool]:
    return lambda line: line.category == category


def calculate_award(
    order: Order,
    rules: EarningRules,
    *,
    zone: ZoneInfo,
    tier_multiplier_bp: int = NEUTRAL_BP,
    bonus_so_far: Mapping[str, int] | None = None,
) -> Award:
    """The points an order earns under the rules, explained for the receipt."""
    order, rules = _checked(order), checked_rules(rules)
    _check_lines(order.lines)
    if type(tier_multiplier_bp) is not int or tier_multiplier_bp < 0:
        raise InvalidInput("tier multiplier is integer basis points >= 0", field="tier_multiplier_bp")
    so_far = dict(bonus_so_far or {})
    for name, points in so_far.items():
        if type(points) is not int or points < 0:
            raise InvalidInput("bonus already granted is an integer >= 0", field=f"bonus_so_far[{name!r}]")
    if order.currency != rules.currency:
        raise InvalidInput(f"the rules earn on {rules.currency}, not {order.currency}", field="currency")
    if order.placed_at < rules.effective_from:
        raise InvalidInput(f"rules version {rules.version} is not yet in force", field="placed_at")

    net = order.net
    if net > MAX_ORDER_NET:
        raise InvalidInput(f"an order's net value is at most {MAX_ORDER_NET} minor units", field="lines")
    if net < rules.minimum_order_minor:
        reason = f"order net {net} is below the minimum of {rules.minimum_order_minor}"
        below = AwardComponent("minimum-order", 0, reason)
        return Award(total=0, breakdown=(below,), campaign_bonus={}, rules_version=rules.version)

    day = order.placed_at.astimezone(zone).date()
    active = [campaign for campaign in rules.campaigns if campaign.starts_on <= day <= campaign.ends_on]
    stages: list[tuple[str, str, int, Callable[[OrderLine], bool], Campaign | None]] = []
    for category in dict.fromkeys(line.category for line in order.lines):
        bp = rules.category_multipliers.get(category, NEUTRAL_BP)
        if bp != NEUTRAL_BP:
            stages.append((f"category:{category}", f"{_times(bp)} on {category}", bp, _in(category), None))
    if tier_multiplier_bp != NEUTRAL_BP:
        stages.append(("tier", f"{_times(tier_multiplier_bp)} for the customer's tier", tier_multiplier_bp, _all, None))
    for campaign in active:
        if campaign.multiplier_bp is not None and any(map(campaign.applies_to, order.lines)):
            detail = f"{_times(campaign.multiplier_bp)} on {campaign.describe()}"
            stages.append((f"campaign:{campaign.name}", detail, campaign.multiplier_bp, campaign.applies_to, campaign))

    # exact arithmetic in integers: each line's points are numerators[i] / denominator
    numerators = [line.net * rules.points_per_unit for line in order.lines]
    denominator = rules.unit_minor
    floored = sum(numerators) // denominator
    base_detail = f"{rules.points_per_unit} per {rules.unit_minor} minor units of {net} {order.currency}"
    components = [AwardComponent("base", floored, base_detail)]
    granted: dict[str, int] = {}
    for rule, detail, bp, applies, source in stages:
        numerators = [
            n * (bp if applies(line) else NEUTRAL_BP) for n, line in zip(numerators, order.lines, strict=True)
        ]
        denominator *= NEUTRAL_BP
        now = sum(numerators) // denominator
        part, floored = now - floored, now
        if source is not None:
            part, detail = _capped(source, part, detail, so_far)
            granted[source.name] = part
        components.append(AwardComponent(rule, part, detail))
    paid = [line for line in order.lines if line.net > 0]  # a free item unlocks no bonus
    for campaign in active:
        if campaign.bonus_points is not None and any(map(campaign.applies_to, paid)):
            part, detail = _capped(campaign, campaign.bonus_points, f"bonus on {campaign.describe()}", so_far)
            granted[campaign.name] = part
            components.append(AwardComponent(f"campaign-bonus:{campaign.name}", part, detail))

    total = sum(component.points for component in components)
    if rules.order_cap is not None and total > rules.order_cap:
        cut = total - rules.order_cap
        components.append(AwardComponent("order-cap", -cut, f"at most {rules.order_cap} points per order"))
        total = rules.order_cap
        for name in reversed(list(granted)):
            taken = min(granted[name], cut)
            granted[name] -= taken
            cut -= taken
    if total > MAX_AWARD_POINTS:
        detail = f"the order would earn {total} points under rules version {rules.version}; an award is at most"
        raise InvalidInput(f"{detail} {MAX_AWARD_POINTS}", field="lines")
    return Award(total=total, breakdown=tuple(components), campaign_bonus=granted, rules_version=rules.version)


def _capped(campaign: Campaign, part: int, detail: str, so_far: Mapping[str, int]) -> tuple[int, str]:
    if campaign.customer_cap is None:
        return part, detail
    left = max(campaign.customer_cap - so_far.get(campaign.name, 0), 0)
    if part <= left:
        return part, detail
    return left, f"{detail}; capped at {campaign.customer_cap} per customer"


def share_taken(total: int, refunded_net: int, net: int) -> int:
    """The share of `total` that refunds of `refunded_net` of an order of net value `net` take
    back in all: floor(total * refunded_net / net), nothing before anything came back, all of
    it once everything did. The one rounding rule of refunds (see the module's docstring)."""
    if refunded_net == 0:
        return 0
    if refunded_net >= net:
        return total
    return total * refunded_net // net


def bonus_kept(bonus: int, refunded_net: int, net: int) -> int:
    """What the customer keeps of a campaign's bonus from an order of net value `net` of which
    `refunded_net` was refunded: the bonus less the share claw_back takes of the whole award,
    floor(bonus * refunded_net / net), and nothing once everything came back. Between 0 and
    `bonus`; service/db/orders.py computes the same in SQL."""
    return bonus - share_taken(bonus, refunded_net, net)


def claw_back(
    lines: Sequence[OrderLine],
    award: Award,
    refund: Refund,
    previous: Sequence[Refund] = (),
) -> Clawback:
    """The points a refund takes back from an order's award, after the refunds already made."""
    lines = [_checked(line, f"lines[{index}]") for index, line in enumerate(lines)]
    _check_lines(lines)
    net = sum(line.net for line in lines)
    returned = [0] * len(lines)
    by_amount = 0
    before = after = items_before = items_after = 0
    for position, item in enumerate([*previous, refund]):
        where = "" if position == len(previous) else f"previous[{position}]"  # the refund's own fields bare

        def at(name: str, where: str = where) -> str:
            return f"{where}.{name}" if where else name

        item = _checked(item, where)
        if (item.amount is None) == (not item.lines):
            raise InvalidInput("a refund is either by lines or by amount", field=where or "amount")
        for index, refunded in enumerate(item.lines):
            if refunded.line >= len(lines):
                raise InvalidInput(f"the order has {len(lines)} lines", field=at(f"lines[{index}].line"))
            returned[refunded.line] += refunded.quantity
            bought = lines[refunded.line].quantity
            if returned[refunded.line] > bought:
                detail = f"refunds {returned[refunded.line]} of {bought} bought"
                raise InvalidInput(detail, field=at(f"lines[{index}].quantity"))
        by_amount += item.amount or 0
        # a line's refunded value rounds down until the whole line is back
        by_lines = sum(line.net * back // line.quantity for line, back in zip(lines, returned, strict=True))
        before, after = after, by_amount + by_lines
        items_before, items_after = items_after, sum(returned)
        if after > net:
            raise InvalidInput(f"refunds {after} of an order net {net}", field=at("amount" if item.amount else "lines"))

    items = (items_before, items_after, sum(line.quantity for line in lines))
    clawback = Clawback(points=0, refunded_net=after, order_net=net, refunded_before=before, items=items)
    return msgspec.structs.replace(clawback, points=clawback.share(award.total))
