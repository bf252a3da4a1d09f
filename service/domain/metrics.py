"""Retention and repeat-purchase maths, free of I/O, as defined in ../shared/METRICS.md.

A purchase is an order not fully refunded; days are local days in the program's zone.
A customer is active at boundary t (00:00 of a day) if they made a purchase on one of
the W days before t, dates [t - W, t - 1]. A period P = [s, e] has boundaries s and e + 1.
Every figure carries the name of its definition, so a response can say what produced it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, timedelta
from enum import StrEnum
from fractions import Fraction
from typing import Annotated, TypeVar

import msgspec

from service.domain.errors import InvalidInput

DEFAULT_WINDOW_DAYS = 90
DEFAULT_TARGET_PCT = 85.0
MAX_PERIODS = 120
FIRST_DAY, LAST_DAY = date(1900, 1, 1), date(2999, 12, 31)  # the days a metric's range may name
DEFINITIONS = "../shared/METRICS.md"
K = TypeVar("K", date, int)  # a quintile cut: a day (recency) or an integer

Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]
Days = Annotated[int, msgspec.Meta(ge=1, le=3660)]
Score = Annotated[int, msgspec.Meta(ge=0, le=10)]


class Definition(StrEnum):
    """The definitions of METRICS.md a response names."""

    RETENTION = "retention: seed ((E - N) / B) x 100, strict retained / B x 100, churn lost / B x 100"
    REPEAT_RATE = "repeat customer rate: customers with 2+ purchases / customers with 1+ x 100"
    FREQUENCY = "purchase frequency: purchases / customers with a purchase"
    AOV = "average order value: net revenue / purchases"
    HISTORICAL_LTV = "historical lifetime value: net revenue per customer to date"
    COHORTS = "cohort retention: share of the first-purchase-month cohort with a purchase in month k"
    RFM = "RFM: recency, frequency, monetary scored 1..5 by quintile within the program"
    UPSELL = "upsell rate: customers with a later item of a higher level in a category / customers with 2+ orders"
    CROSS_SELL = "cross-sell rate: customers buying a new category in a later order / customers with 2+ orders"
    RISK = "churn-risk traffic light: red / orange / green by the program's rules"
    PREDICTED_LTV = "predicted lifetime value: BG/NBD + Gamma-Gamma, discounted monthly"


# --- Periods ---------------------------------------------------------------------------


class Period(msgspec.Struct, frozen=True, kw_only=True):
    """A range of whole days [start, end], both included."""

    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


class Granularity(StrEnum):
    MONTH = "month"
    QUARTER = "quarter"
    CUSTOM = "custom"  # one period: exactly the range asked for


def _month_start(day: date) -> date:
    return day.replace(day=1)


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def check_range(start: date, end: date) -> None:
    """Refuse a range that runs backwards or names a day outside FIRST_DAY..LAST_DAY."""
    for field, day in (("from", start), ("to", end)):
        if not FIRST_DAY <= day <= LAST_DAY:
            raise InvalidInput(f"`{field}` must be from {FIRST_DAY} to {LAST_DAY}", field=field)
    if end < start:
        raise InvalidInput("`to` must not be before `from`", field="to")


def periods_between(start: date, end: date, granularity: Granularity) -> list[Period]:
    """The calendar months or quarters overlapping [start, end] (whole ones), or the range itself."""
    check_range(start, end)
    if granularity is Granularity.CUSTOM:
        return [Period(start=start, end=end)]
    step = 1 if granularity is Granularity.MONTH else 3
    first = _month_start(start)
    if step == 3:
        first = first.replace(month=(first.month - 1) // 3 * 3 + 1)
    found: list[Period] = []
    while first <= end:
        following = _add_months(first, step)
        found.append(Period(start=first, end=following - timedelta(days=1)))
        first = following
        if len(found) > MAX_PERIODS:
            raise InvalidInput(f"at most {MAX_PERIODS} periods per request", field="from")
    return found


# --- Retention -------------------------------------------------------------------------


class RetentionCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Customers active at the period's boundaries (B at s, E at e + 1), new in it (N),
    active at both (retained) and active at e + 1 after a lapse, not new (reactivated)."""

    b: int
    e: int
    n: int
    retained: int
    reactivated: int

    @property
    def lost(self) -> int:
        return self.b - self.retained


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    period: Period
    window_days: int
    b: int
    e: int
    n: int
    retained: int
    lost: int
    reactivated: int
    rate_pct: float | None  # seed: ((E - N) / B) x 100
    strict_rate_pct: float | None  # retained / B x 100
    churn_rate_pct: float | None  # lost / B x 100
    target_pct: float
    meets_target: bool | None  # seed rate > target; None when B = 0


def _pct(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else round(numerator / denominator * 100, 2)


def retention(period: Period, counts: RetentionCounts, window_days: int, target_pct: float) -> Retention:
    """The seed rate, the strict rate and churn from the counts; null rates when B = 0.

    The seed says healthy programs retain *more than* the target, so a period meets it
    when the seed rate (exact, before rounding) is strictly above the target.
    """
    rate = _pct(counts.e - counts.n, counts.b)
    return Retention(
        period=period,
        window_days=window_days,
        b=counts.b,
        e=counts.e,
        n=counts.n,
        retained=counts.retained,
        lost=counts.lost,
        reactivated=counts.reactivated,
        rate_pct=rate,
        strict_rate_pct=_pct(counts.retained, counts.b),
        churn_rate_pct=_pct(counts.lost, counts.b),
        target_pct=target_pct,
        # the exact rate, not the rounded one shown (85.001 % is more than 85 %), against the
        # target as written (84.99, not the binary float just below it)
        meets_target=None
        if rate is None
        else Fraction(counts.e - counts.n, counts.b) * 100 > Fraction(str(target_pct)),
    )


def active_at(purchase_days: Iterable[date], boundary: date, window_days: int) -> bool:
    """Whether a purchase falls on one of the W days before the boundary: [t - W, t - 1]."""
    earliest = boundary - timedelta(days=window_days)
    return any(earliest <= day < boundary for day in purchase_days)


def count_retention(purchase_days: Mapping[str, Sequence[date]], period: Period, window_days: int) -> RetentionCounts:
    """The counts straight from each customer's purchase days (the reference the rollup
    queries are tested against)."""
    boundary_end = period.end + timedelta(days=1)
    b = e = n = retained = reactivated = 0
    for days in purchase_days.values():
        if not days:
            continue
        at_start = active_at(days, period.start, window_days)
        at_end = active_at(days, boundary_end, window_days)
        new = period.start <= min(days) <= period.end
        b += at_start
        e += at_end
        n += new
        retained += at_start and at_end
        reactivated += at_end and not at_start and not new
    return RetentionCounts(b=b, e=e, n=n, retained=retained, reactivated=reactivated)


# --- Repeat purchases and value --------------------------------------------------------


class PurchaseCount(StrEnum):
    PURCHASES = "purchases"  # purchases on the same day count separately
    DISTINCT_DAYS = "distinct_days"  # a day with purchases counts once


class RepeatFigures(msgspec.Struct, frozen=True, kw_only=True):
    counted_as: PurchaseCount
    customers: int  # with 1 or more purchases in the range
    repeat_customers: int  # with 2 or more
    counted: int  # purchases, or distinct purchase days, by counted_as
    purchases: int
    net: int
    repeat_customer_rate_pct: float | None
    purchase_frequency: float | None
    average_order_value: float | None


def repeat_figures(
    customers: int, repeat_customers: int, counted: int, purchases: int, net: int, counted_as: PurchaseCount
) -> RepeatFigures:
    """Repeat rate, frequency and average order value; null when nothing was bought.

    The repeat rate and the frequency follow `counted_as`; the average order value always
    divides by purchases (an order's value is its own, whatever the day).
    """
    return RepeatFigures(
        counted_as=counted_as,
        customers=customers,
        repeat_customers=repeat_customers,
        counted=counted,
        purchases=purchases,
        net=net,
        repeat_customer_rate_pct=_pct(repeat_customers, customers),
        purchase_frequency=None if customers == 0 else round(counted / customers, 4),
        average_order_value=None if purchases == 0 else round(net / purchases, 2),
    )


# --- Cohorts ---------------------------------------------------------------------------


class CohortRow(msgspec.Struct, frozen=True, kw_only=True):
    cohort: date  # first day of the month of first purchase
    size: int
    active: list[int]  # customers with a purchase in month k = 0, 1, ...
    retention_pct: list[float | None]


def cohort_rows(
    sizes: Mapping[date, int], active: Mapping[tuple[date, date], int], last_month: date
) -> list[CohortRow]:
    """Rows per cohort month, columns k = 0 .. up to last_month; k = 0 is 100 %."""
    found = []
    for cohort in sorted(sizes):
        months = (last_month.year - cohort.year) * 12 + last_month.month - cohort.month
        counts = [active.get((cohort, _add_months(cohort, k)), 0) for k in range(months + 1)]
        found.append(
            CohortRow(
                cohort=cohort,
                size=sizes[cohort],
                active=counts,
                retention_pct=[_pct(count, sizes[cohort]) for count in counts],
            )
        )
    return found


# --- RFM -------------------------------------------------------------------------------


def quintile_scores(values: Sequence[float]) -> list[int]:
    """Score each value 1..5 by quintile, higher values higher: 1 + floor(5 (rank - 1) / n),
    where rank is the value's competition rank ascending (ties share a score)."""
    ordered = sorted(values)
    n = len(values)
    first_rank: dict[float, int] = {}
    for index, value in enumerate(ordered, start=1):
        first_rank.setdefault(value, index)
    return [min(5, 1 + (5 * (first_rank[value] - 1)) // n) for value in values]


def quintile_positions(n: int) -> list[int]:
    """The 0-based positions, in ascending order of n values, of the cuts of scores 2..5:
    a value scores at least k when it is greater than the value at position
    ceil((k - 1) n / 5) - 1 (the same scores as quintile_scores, from four values)."""
    return [-(-(k - 1) * n // 5) - 1 for k in range(2, 6)]


def locate(histogram: Sequence[tuple[K, int]], position: int) -> tuple[K, int]:
    """The key of the ascending histogram's bucket that holds the 0-based position, and the
    position within that bucket."""
    before = 0
    for key, count in histogram:
        if position < before + count:
            return key, position - before
        before += count
    raise ValueError("position beyond the histogram")


def quintile_cuts(histogram: Sequence[tuple[K, int]]) -> list[K]:
    """The four cut values of an ascending histogram of exact values (see quintile_positions)."""
    n = sum(count for _, count in histogram)
    return [locate(histogram, position)[0] for position in quintile_positions(n)]


def cut_score(value: K, cuts: Sequence[K]) -> int:
    """1 + the number of cuts the value is greater than."""
    return 1 + sum(value > cut for cut in cuts)


class RfmCuts(msgspec.Struct, frozen=True, kw_only=True):
    """The program's four cuts of each score (see quintile_positions), over the customers
    with a purchase: last purchase day (recency), purchases (frequency), net spend (monetary)."""

    customers: int
    recency: list[date]
    frequency: list[int]
    monetary: list[int]


class SegmentRule(msgspec.Struct, frozen=True, kw_only=True):
    """A named segment: the first rule whose bounds hold names the customer."""

    name: str
    r_min: int = 1
    r_max: int = 5
    f_min: int = 1
    f_max: int = 5
    m_min: int = 1
    max_purchases: int | None = None
    description: str = ""


SEGMENTS: tuple[SegmentRule, ...] = (
    SegmentRule(name="champions", r_min=4, f_min=4, m_min=4, description="bought recently, often, and spend most"),
    SegmentRule(name="loyal", r_min=3, f_min=4, description="buy often and not long ago"),
    SegmentRule(name="new", r_min=4, max_purchases=1, description="one purchase, recently"),
    SegmentRule(name="promising", r_min=4, description="recent buyers, not yet frequent"),
    SegmentRule(name="needs_attention", r_min=3, r_max=3, description="middling recency"),
    SegmentRule(name="at_risk", r_max=2, f_min=3, description="used to buy often, not for a while"),
    SegmentRule(name="hibernating", r_max=2, description="rarely, and long ago"),
)


def segment_of(r: int, f: int, m: int, purchases: int) -> str:
    """The named segment of an R, F, M score triple (first matching rule of SEGMENTS)."""
    for rule in SEGMENTS:
        if (
            rule.r_min <= r <= rule.r_max
            and rule.f_min <= f <= rule.f_max
            and m >= rule.m_min
            and (rule.max_purchases is None or purchases <= rule.max_purchases)
        ):
            return rule.name
    raise AssertionError("the last segment takes everyone left")  # pragma: no cover


PURCHASES_CAP = max(rule.max_purchases or 0 for rule in SEGMENTS) + 1  # more purchases than any rule asks about


def segment_sizes(cells: Iterable[tuple[int, int, int, int, int]]) -> dict[str, int]:
    """Customers per segment from counts of (r, f, m, purchases up to PURCHASES_CAP, customers)."""
    sizes = dict.fromkeys(segment_names(), 0)
    for r, f, m, purchases, customers in cells:
        sizes[segment_of(r, f, m, purchases)] += customers
    return sizes


def segment_names() -> list[str]:
    return [rule.name for rule in SEGMENTS]


# --- Upsell and cross-sell -------------------------------------------------------------


class OrderItems(msgspec.Struct, frozen=True):
    """One purchase's lines as (category, level or None), in the customer's order sequence."""

    items: tuple[tuple[str, int | None], ...]


def upsell_cross_sell(orders: Sequence[OrderItems]) -> tuple[bool, bool]:
    """(upsold, cross-sold) for one customer's purchases in time order."""
    seen: dict[str, int | None] = {}
    upsold = cross_sold = False
    for index, order in enumerate(orders):
        for category, level in order.items:
            if index and category not in seen:
                cross_sold = True
            before = seen.get(category)
            if index and before is not None and level is not None and level > before:
                upsold = True
        for category, level in order.items:
            previous = seen.get(category)
            seen[category] = level if previous is None else max(previous, level if level is not None else previous)
    return upsold, cross_sold


# --- Churn-risk traffic light ----------------------------------------------------------


class Colour(StrEnum):
    GREEN = "green"
    ORANGE = "orange"
    RED = "red"


class RiskRules(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The program's churn-risk rules (defaults from METRICS.md)."""

    red_inactive_days: Days = 60
    red_on_open_complaint: bool = True
    orange_inactive_days: Days = 30
    orange_on_open_ticket: bool = True
    orange_score_below: Score | None = 7  # a latest satisfaction score below this is orange


class MetricSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-program metric settings."""

    retention_target_pct: Percent = DEFAULT_TARGET_PCT
    risk: RiskRules = RiskRules()


class CustomerSignals(msgspec.Struct, frozen=True, kw_only=True):
    days_inactive: int  # since the last purchase, or since enrolment for a customer who never bought
    open_complaints: int = 0
    open_tickets: int = 0
    last_score: int | None = None


class Risk(msgspec.Struct, frozen=True, kw_only=True):
    colour: Colour
    rule: str  # the rule that set the colour


def churn_risk(signals: CustomerSignals, rules: RiskRules) -> Risk:
    """Red before orange before green; the first rule that holds names the colour.

    A customer who never bought is inactive since enrolment.
    """
    inactive = signals.days_inactive
    if inactive >= rules.red_inactive_days:
        return Risk(colour=Colour.RED, rule=f"inactive {rules.red_inactive_days}+ days")
    if rules.red_on_open_complaint and signals.open_complaints:
        return Risk(colour=Colour.RED, rule="open complaint")
    if inactive >= rules.orange_inactive_days:
        return Risk(colour=Colour.ORANGE, rule=f"inactive {rules.orange_inactive_days}+ days")
    if rules.orange_on_open_ticket and signals.open_tickets:
        return Risk(colour=Colour.ORANGE, rule="open support ticket")
    below = rules.orange_score_below
    if below is not None and signals.last_score is not None and signals.last_score < below:
        return Risk(colour=Colour.ORANGE, rule=f"satisfaction score below {below}")
    return Risk(colour=Colour.GREEN, rule="no risk rule applies")


# --- The rollups' arithmetic -----------------------------------------------------------


class RefundEffect(msgspec.Struct, frozen=True, kw_only=True):
    """What a refund changes in its order's day: net lowered, a purchase lost or not."""

    net_delta: int
    purchase_lost: bool


def refund_effect(
    order_net: int, refunded_before: int, refunded_after: int, items: tuple[int, int, int] = (0, 0, 0)
) -> RefundEffect:
    """A refund lowers the day's net; the one that makes the order fully refunded removes
    its purchase. An order of net 0 (free items) is refunded in items, `items` = (returned
    before, returned after, bought): it is fully refunded once every item is back (the
    measure `Clawback.share` takes)."""
    before, after, whole = (refunded_before, refunded_after, order_net) if order_net > 0 else items
    return RefundEffect(net_delta=refunded_after - refunded_before, purchase_lost=before < whole <= after)
