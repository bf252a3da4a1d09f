"""Retention and repeat-purchase metrics: the rollup hooks of orders and refunds, and the
read-only figures (../shared/METRICS.md), each read in one snapshot from the rollups."""

from __future__ import annotations

from datetime import date, datetime

import asyncpg
import msgspec

from service.db import metric_rollups as rollups
from service.db import metrics as rows
from service.db import retention as retention_rows
from service.db import rfm
from service.db.transaction import in_transaction, snapshot
from service.domain.errors import InvalidInput
from service.domain.metric_rollups import Activity, rollup_change
from service.domain.metrics import (
    DEFINITIONS,
    SEGMENTS,
    CohortRow,
    Definition,
    Granularity,
    MetricSettings,
    Period,
    PurchaseCount,
    RepeatFigures,
    Retention,
    SegmentRule,
    check_range,
    cohort_rows,
    periods_between,
    refund_effect,
    repeat_figures,
    retention,
    segment_names,
)
from service.domain.metrics import segment_sizes as sizes_of_segments
from service.usecases.ledger_settings import local_today

# --- Hooks: one call each in place_order and refund_order ------------------------------


async def after_order(connection: asyncpg.Connection, program_id: str, order: asyncpg.Record) -> None:
    """Count a stored order in the rollups, in the order's transaction."""
    customer_id, net = order["customer_id"], order["net"]
    row = await rollups.add_order(connection, program_id, customer_id, order["placed_at"], net, order["created_at"])
    days = tuple(row["days"])
    before = Activity(days=days, purchases=row["purchases"] - 1, net=row["net"] - net)
    after = Activity(days=tuple(sorted({*days, row["day"]})), purchases=row["purchases"], net=row["net"])
    await rollups.apply_change(connection, program_id, customer_id, rollup_change(before, after))


async def after_refund(
    connection: asyncpg.Connection,
    program_id: str,
    order: asyncpg.Record,
    refunded_after: int,
    items: tuple[int, int, int] = (0, 0, 0),
) -> None:
    """Lower the rollups by a refund, in the refund's transaction; `order` is the row as it
    was before the refund (its refunded_net is what was refunded before), `items` the items
    returned before and after the refund and bought (what an order of net 0 is refunded in)."""
    effect = refund_effect(order["net"], order["refunded_net"], refunded_after, items)
    if not effect.net_delta and not effect.purchase_lost:
        return
    customer_id = order["customer_id"]
    row = await rollups.apply_refund(
        connection, program_id, customer_id, order["placed_at"], effect.net_delta, effect.purchase_lost
    )
    days = tuple(row["days"])
    lost = int(effect.purchase_lost)
    before = Activity(days=days, purchases=row["purchases"] + lost, net=row["net"] + effect.net_delta)
    kept = tuple(day for day in days if day != row["day"] or row["day_purchases"] > 0)
    after = Activity(days=kept, purchases=row["purchases"], net=row["net"])
    await rollups.apply_change(connection, program_id, customer_id, rollup_change(before, after))


async def backfill(program_id: str) -> int:
    """Rebuild a program's rollups from its orders; returns the customers with an order."""
    return await in_transaction(lambda connection: rollups.rebuild(connection, program_id))


# --- Reading ---------------------------------------------------------------------------


class RetentionSeries(msgspec.Struct, frozen=True, kw_only=True):
    definition: str
    reference: str
    window_days: int
    granularity: Granularity
    target_pct: float
    periods: list[Retention]


async def retention_series(
    program_id: str,
    start: date,
    end: date,
    granularity: Granularity,
    window_days: int,
    target_pct: float | None,
) -> RetentionSeries:
    """Retention of each month or quarter overlapping [start, end], or of that one range."""
    periods = periods_between(start, end, granularity)
    async with snapshot() as connection:
        settings = await rows.load_settings(connection, program_id)
        counts = await retention_rows.retention_counts(connection, program_id, periods, window_days)
    target = settings.retention_target_pct if target_pct is None else target_pct
    return RetentionSeries(
        definition=Definition.RETENTION.value,
        reference=DEFINITIONS,
        window_days=window_days,
        granularity=granularity,
        target_pct=target,
        periods=[retention(period, count, window_days, target) for period, count in zip(periods, counts, strict=True)],
    )


class RepeatReport(msgspec.Struct, frozen=True, kw_only=True):
    definitions: list[str]
    reference: str
    period: Period
    figures: RepeatFigures


async def repeat_report(program_id: str, start: date, end: date, counted_as: PurchaseCount) -> RepeatReport:
    """Repeat customer rate, purchase frequency and average order value over [start, end]."""
    period = periods_between(start, end, Granularity.CUSTOM)[0]
    async with snapshot() as connection:
        row = await rows.repeat_totals(connection, program_id, period)
    by_days = counted_as is PurchaseCount.DISTINCT_DAYS
    figures = repeat_figures(
        customers=row["customers"],
        repeat_customers=row["repeat_by_days" if by_days else "repeat_by_purchases"],
        counted=row["days" if by_days else "purchases"],
        purchases=row["purchases"],
        net=row["net"],
        counted_as=counted_as,
    )
    definitions = [Definition.REPEAT_RATE.value, Definition.FREQUENCY.value, Definition.AOV.value]
    return RepeatReport(definitions=definitions, reference=DEFINITIONS, period=period, figures=figures)


class LifetimeValue(msgspec.Struct, frozen=True, kw_only=True):
    definition: str
    reference: str
    as_of: date  # the local day "to date" ends with
    customers: int
    net: int
    mean: float | None
    median: float | None


async def historical_ltv(program_id: str, now: datetime) -> LifetimeValue:
    """Net revenue per customer with a purchase to date: total, mean and median."""
    async with snapshot() as connection:
        today = await local_today(connection, program_id, now)
        row = await rows.lifetime_totals(connection, program_id)
    customers = row["customers"]
    return LifetimeValue(
        definition=Definition.HISTORICAL_LTV.value,
        reference=DEFINITIONS,
        as_of=today,
        customers=customers,
        net=row["net"],
        mean=None if customers == 0 else round(row["net"] / customers, 2),
        median=None if row["median"] is None else round(row["median"], 2),
    )


class CohortTable(msgspec.Struct, frozen=True, kw_only=True):
    definition: str
    reference: str
    first_cohort: date
    last_month: date
    rows: list[CohortRow]


async def cohort_table(program_id: str, start: date, end: date) -> CohortTable:
    """Cohorts by month of first purchase from start's month to end's month, followed to end's month."""
    check_range(start, end)
    first, last = start.replace(day=1), end.replace(day=1)
    if (last.year - first.year) * 12 + last.month - first.month >= 120:
        raise InvalidInput("at most 120 cohort months per request", field="from")
    async with snapshot() as connection:
        sizes, active = await rows.cohorts(connection, program_id, first, last)
    return CohortTable(
        definition=Definition.COHORTS.value,
        reference=DEFINITIONS,
        first_cohort=first,
        last_month=last,
        rows=cohort_rows(sizes, active, last),
    )


class Segment(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    size: int
    rule: SegmentRule


class SegmentSizes(msgspec.Struct, frozen=True, kw_only=True):
    definition: str
    reference: str
    as_of: date
    customers: int
    segments: list[Segment]


async def segment_sizes(program_id: str, now: datetime) -> SegmentSizes:
    """How many customers each named RFM segment holds today."""
    async with snapshot() as connection:
        today = await local_today(connection, program_id, now)
        cuts = await rfm.load_cuts(connection, program_id)
        cells = [] if cuts is None else await rfm.score_cells(connection, program_id, cuts)
    sizes = sizes_of_segments(cells)
    return SegmentSizes(
        definition=Definition.RFM.value,
        reference=DEFINITIONS,
        as_of=today,
        customers=sum(sizes.values()),
        segments=[Segment(name=rule.name, size=sizes[rule.name], rule=rule) for rule in SEGMENTS],
    )


class CustomerRfm(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: str
    recency_days: int
    frequency: int
    monetary: int
    r: int
    f: int
    m: int
    segment: str


class RfmPage(msgspec.Struct, frozen=True, kw_only=True):
    definition: str
    reference: str
    as_of: date
    segment: str | None
    items: list[CustomerRfm]
    next_cursor: str | None


async def rfm_customers(program_id: str, now: datetime, segment: str | None, cursor: str | None, limit: int) -> RfmPage:
    """Customers with their RFM scores and segment, by id, one segment or all, a page at a time."""
    if segment is not None and segment not in segment_names():
        raise InvalidInput(f"unknown segment; one of: {', '.join(segment_names())}", field="segment")
    async with snapshot() as connection:
        today = await local_today(connection, program_id, now)
        cuts = await rfm.load_cuts(connection, program_id)
        found = (
            [] if cuts is None else await rfm.rfm_page(connection, program_id, cuts, today, segment, cursor, limit + 1)
        )
    items = [
        CustomerRfm(
            customer_id=row["customer_id"],
            recency_days=row["recency"],
            frequency=row["frequency"],
            monetary=row["monetary"],
            r=row["r"],
            f=row["f"],
            m=row["m"],
            segment=row["segment"],
        )
        for row in found[:limit]
    ]
    return RfmPage(
        definition=Definition.RFM.value,
        reference=DEFINITIONS,
        as_of=today,
        segment=segment,
        items=items,
        next_cursor=items[-1].customer_id if len(found) > limit else None,
    )


class SellRates(msgspec.Struct, frozen=True, kw_only=True):
    definitions: list[str]
    reference: str
    as_of: date  # the local day the purchases to date end with
    repeat_customers: int  # customers with 2 or more purchases (the denominator)
    upsold: int
    cross_sold: int
    upsell_rate_pct: float | None
    cross_sell_rate_pct: float | None


async def sell_rates(program_id: str, now: datetime) -> SellRates:
    """Upsell and cross-sell rates from the lines (category, level) of the program's purchases."""
    async with snapshot() as connection:
        today = await local_today(connection, program_id, now)
        row = await rows.upsell_totals(connection, program_id)
    base = row["repeat_customers"]
    return SellRates(
        definitions=[Definition.UPSELL.value, Definition.CROSS_SELL.value],
        reference=DEFINITIONS,
        as_of=today,
        repeat_customers=base,
        upsold=row["upsold"],
        cross_sold=row["cross_sold"],
        upsell_rate_pct=None if base == 0 else round(row["upsold"] / base * 100, 2),
        cross_sell_rate_pct=None if base == 0 else round(row["cross_sold"] / base * 100, 2),
    )


# --- Settings --------------------------------------------------------------------------


async def get_settings(program_id: str) -> MetricSettings:
    return await in_transaction(lambda connection: rows.load_settings(connection, program_id))


async def set_settings(program_id: str, settings: MetricSettings, now: datetime) -> MetricSettings:
    """Replace the program's retention target and churn-risk rules."""
    if settings.risk.orange_inactive_days >= settings.risk.red_inactive_days:
        raise InvalidInput("orange must start before red", field="risk.orange_inactive_days")

    async def work(connection: asyncpg.Connection) -> MetricSettings:
        await rows.save_settings(connection, program_id, settings, now)
        return settings

    return await in_transaction(work)
