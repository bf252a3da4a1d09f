"""The metrics maths of ../shared/METRICS.md, without a database."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.errors import InvalidInput
from service.domain.metrics import (
    Colour,
    CustomerSignals,
    Granularity,
    OrderItems,
    Period,
    PurchaseCount,
    RetentionCounts,
    RiskRules,
    active_at,
    churn_risk,
    cohort_rows,
    count_retention,
    periods_between,
    quintile_scores,
    refund_effect,
    repeat_figures,
    retention,
    segment_of,
    upsell_cross_sell,
)

MARCH = Period(start=date(2026, 3, 1), end=date(2026, 3, 31))


def test_the_seeds_worked_example() -> None:
    # B = 130 at the start, 9 of them lost, 23 new gained, E = 144 at the end
    counts = RetentionCounts(b=130, e=144, n=23, retained=121, reactivated=0)
    figures = retention(MARCH, counts, 90, 85.0)
    assert figures.rate_pct == 93.08
    assert figures.lost == 9
    assert figures.strict_rate_pct == 93.08  # nobody lapsed returned: both rates agree
    assert figures.churn_rate_pct == 6.92
    assert figures.meets_target is True
    assert retention(MARCH, counts, 90, 95.0).meets_target is False


def test_the_target_check_uses_the_exact_rate_not_the_rounded_one() -> None:
    # (85001 - 0) / 100000 = 85.001 %: more than 85 %, though it shows as 85.0
    above = retention(MARCH, RetentionCounts(b=100_000, e=85_001, n=0, retained=85_001, reactivated=0), 90, 85.0)
    assert (above.rate_pct, above.meets_target) == (85.0, True)
    # 84.996 % shows as 85.0 and is not more than 85 %
    below = retention(MARCH, RetentionCounts(b=250_000, e=212_490, n=0, retained=212_490, reactivated=0), 90, 85.0)
    assert (below.rate_pct, below.meets_target) == (85.0, False)
    exact = retention(MARCH, RetentionCounts(b=20, e=17, n=0, retained=17, reactivated=0), 90, 85.0)
    assert (exact.rate_pct, exact.meets_target) == (85.0, False)  # exactly the target is not more
    written = retention(MARCH, RetentionCounts(b=10_000, e=8_499, n=0, retained=8_499, reactivated=0), 90, 84.99)
    assert (written.rate_pct, written.meets_target) == (84.99, False)


def test_no_customers_at_the_start_gives_null_rates() -> None:
    figures = retention(MARCH, RetentionCounts(b=0, e=5, n=5, retained=0, reactivated=0), 90, 85.0)
    assert (figures.rate_pct, figures.strict_rate_pct, figures.churn_rate_pct, figures.meets_target) == (
        None,
        None,
        None,
        None,
    )


def test_active_at_counts_the_w_days_before_the_boundary() -> None:
    t = date(2026, 4, 1)
    assert active_at([t - timedelta(days=1)], t, 90)
    assert active_at([t - timedelta(days=90)], t, 90)
    assert not active_at([t - timedelta(days=91)], t, 90)
    assert not active_at([t], t, 90)  # a purchase on the boundary day is after 00:00


def test_lapsed_customers_returning_are_reactivated_not_retained() -> None:
    days = {
        "kept": [date(2026, 2, 20), date(2026, 3, 20)],
        "lapsed": [date(2025, 10, 1), date(2026, 3, 15)],  # inactive at 1 March, back in March
        "lost": [date(2025, 12, 15)],  # active at 1 March, not at 1 April
        "new": [date(2026, 3, 3)],
    }
    counts = count_retention(days, MARCH, 90)
    assert counts == RetentionCounts(b=2, e=3, n=1, retained=1, reactivated=1)
    figures = retention(MARCH, counts, 90, 85.0)
    assert figures.rate_pct == 100.0  # the seed formula counts the returning customer as kept
    assert figures.strict_rate_pct == 50.0
    assert figures.churn_rate_pct == 50.0


def test_a_period_longer_than_the_window() -> None:
    year = Period(start=date(2025, 1, 1), end=date(2025, 12, 31))
    days = {
        "early_new": [date(2025, 2, 1)],  # new in the period, inactive at its end
        "late_new": [date(2025, 12, 10)],
        "kept": [date(2024, 12, 15), date(2025, 12, 30)],  # active at both ends, not in between
    }
    counts = count_retention(days, year, 30)
    assert counts == RetentionCounts(b=1, e=2, n=2, retained=1, reactivated=0)
    # E - N undercounts when new customers lapse inside the period: 0 %, strict 100 %
    figures = retention(year, counts, 30, 85.0)
    assert (figures.rate_pct, figures.strict_rate_pct) == (0.0, 100.0)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=4),
        st.lists(st.dates(min_value=date(2025, 1, 1), max_value=date(2026, 12, 31)), min_size=1, max_size=6),
        max_size=12,
    ),
    st.integers(min_value=1, max_value=200),
)
def test_strict_retention_and_churn_add_up(days: dict[str, list[date]], window: int) -> None:
    counts = count_retention(days, MARCH, window)
    figures = retention(MARCH, counts, window, 85.0)
    assert counts.retained <= counts.b and counts.retained + counts.reactivated + counts.n >= counts.e - counts.n
    if counts.b:
        assert figures.strict_rate_pct is not None and figures.churn_rate_pct is not None
        assert abs(figures.strict_rate_pct + figures.churn_rate_pct - 100) < 0.011
        assert 0 <= figures.strict_rate_pct <= 100
    # E = retained + reactivated + new customers active at the end
    new_active = sum(
        1
        for d in days.values()
        if MARCH.start <= min(d) <= MARCH.end and active_at(d, MARCH.end + timedelta(days=1), window)
    )
    assert counts.e == counts.retained + counts.reactivated + new_active


def test_periods_months_quarters_and_custom() -> None:
    months = periods_between(date(2026, 1, 15), date(2026, 3, 2), Granularity.MONTH)
    assert [(p.start, p.end) for p in months] == [
        (date(2026, 1, 1), date(2026, 1, 31)),
        (date(2026, 2, 1), date(2026, 2, 28)),
        (date(2026, 3, 1), date(2026, 3, 31)),
    ]
    quarters = periods_between(date(2025, 11, 1), date(2026, 2, 1), Granularity.QUARTER)
    assert [(p.start, p.end) for p in quarters] == [
        (date(2025, 10, 1), date(2025, 12, 31)),
        (date(2026, 1, 1), date(2026, 3, 31)),
    ]
    custom = periods_between(date(2026, 1, 15), date(2026, 3, 2), Granularity.CUSTOM)
    assert custom == [Period(start=date(2026, 1, 15), end=date(2026, 3, 2))]
    with pytest.raises(InvalidInput) as refused:
        periods_between(date(2026, 3, 2), date(2026, 3, 1), Granularity.MONTH)
    assert refused.value.field == "to"


def test_repeat_figures_say_how_purchases_were_counted() -> None:
    figures = repeat_figures(
        customers=4, repeat_customers=1, counted=5, purchases=6, net=6000, counted_as=PurchaseCount.DISTINCT_DAYS
    )
    assert figures.repeat_customer_rate_pct == 25.0
    assert figures.purchase_frequency == 1.25
    assert figures.average_order_value == 1000.0
    empty = repeat_figures(0, 0, 0, 0, 0, PurchaseCount.PURCHASES)
    assert (empty.repeat_customer_rate_pct, empty.purchase_frequency, empty.average_order_value) == (None, None, None)


def test_cohort_rows_start_at_100_percent() -> None:
    jan, feb, mar = date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1)
    rows = cohort_rows({jan: 4, feb: 2}, {(jan, jan): 4, (jan, mar): 1, (feb, feb): 2, (feb, mar): 2}, mar)
    assert rows[0].active == [4, 0, 1] and rows[0].retention_pct == [100.0, 0.0, 25.0]
    assert rows[1].active == [2, 2] and rows[1].retention_pct == [100.0, 100.0]


def test_quintile_scores_share_ties() -> None:
    assert quintile_scores([10, 20, 30, 40, 50]) == [1, 2, 3, 4, 5]
    assert quintile_scores([1, 1, 1, 1, 9]) == [1, 1, 1, 1, 5]
    assert quintile_scores(list(range(10))) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_segments_first_matching_rule() -> None:
    assert segment_of(5, 5, 5, 20) == "champions"
    assert segment_of(4, 4, 2, 8) == "loyal"
    assert segment_of(5, 1, 1, 1) == "new"
    assert segment_of(4, 2, 3, 2) == "promising"
    assert segment_of(3, 1, 1, 2) == "needs_attention"
    assert segment_of(1, 4, 4, 9) == "at_risk"
    assert segment_of(2, 1, 5, 1) == "hibernating"


def test_upsell_and_cross_sell_need_a_later_order() -> None:
    first = OrderItems(items=(("coffee", 1), ("bakery", None)))
    assert upsell_cross_sell([first]) == (False, False)
    assert upsell_cross_sell([first, OrderItems(items=(("coffee", 2),))]) == (True, False)
    assert upsell_cross_sell([first, OrderItems(items=(("homeware", 1),))]) == (False, True)
    assert upsell_cross_sell([first, OrderItems(items=(("coffee", 1), ("bakery", 3)))]) == (False, False)
    # a higher level within the same first order is not an upsell
    assert upsell_cross_sell([OrderItems(items=(("coffee", 1), ("coffee", 3)))]) == (False, False)


def test_churn_risk_names_the_rule() -> None:
    rules = RiskRules()
    assert churn_risk(CustomerSignals(days_inactive=60), rules).colour is Colour.RED
    assert churn_risk(CustomerSignals(days_inactive=61), rules).rule == "inactive 60+ days"
    assert churn_risk(CustomerSignals(days_inactive=1, open_complaints=1), rules).rule == "open complaint"
    assert churn_risk(CustomerSignals(days_inactive=30), rules).rule == "inactive 30+ days"
    assert churn_risk(CustomerSignals(days_inactive=2, open_tickets=2), rules).rule == "open support ticket"
    low = churn_risk(CustomerSignals(days_inactive=2, last_score=6), rules)
    assert (low.colour, low.rule) == (Colour.ORANGE, "satisfaction score below 7")
    assert churn_risk(CustomerSignals(days_inactive=29, last_score=7), rules).colour is Colour.GREEN
    lenient = RiskRules(red_on_open_complaint=False, orange_score_below=None)
    assert churn_risk(CustomerSignals(days_inactive=1, open_complaints=1, last_score=0), lenient).colour is Colour.GREEN


def test_refund_effect() -> None:
    partial = refund_effect(1000, 0, 400)
    assert (partial.net_delta, partial.purchase_lost) == (400, False)
    full = refund_effect(1000, 400, 1000)
    assert (full.net_delta, full.purchase_lost) == (600, True)
    assert refund_effect(0, 0, 0).purchase_lost is False


def test_a_free_order_is_refunded_in_items() -> None:
    # an order of net 0 is fully refunded once every item is back: (before, after, bought)
    assert refund_effect(0, 0, 0, (0, 1, 2)).purchase_lost is False
    assert refund_effect(0, 0, 0, (1, 2, 2)) == refund_effect(0, 0, 0, (0, 2, 2))
    assert refund_effect(0, 0, 0, (0, 2, 2)).purchase_lost is True
    assert refund_effect(0, 0, 0, (2, 2, 2)).purchase_lost is False  # already gone
    assert refund_effect(1000, 0, 999, (0, 3, 3)).purchase_lost is False  # with a value: by value
