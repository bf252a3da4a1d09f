"""The per-customer rollups' arithmetic (spells, contributions, their differences) and the
RFM cuts, without a database."""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from service.domain.metric_rollups import Activity, RollupChange, Spell, rollup_change, spells
from service.domain.metrics import (
    active_at,
    cut_score,
    locate,
    quintile_cuts,
    quintile_positions,
    quintile_scores,
    segment_sizes,
)

JAN = date(2026, 1, 1)


def test_spells_join_purchase_days_at_most_the_window_apart() -> None:
    days = [JAN, JAN + timedelta(days=90), JAN + timedelta(days=181)]
    assert spells(days, 90) == [
        Spell(active_from=date(2026, 1, 2), active_until=date(2026, 7, 1)),  # 1 Jan and 1 April: 90 days apart
        Spell(
            active_from=date(2026, 7, 2),
            active_until=date(2026, 9, 30),
            prev_from=date(2026, 1, 2),
            prev_until=date(2026, 7, 1),  # 1 July is 91 days after 1 April: a new spell
        ),
    ]
    assert spells([], 90) == []


@given(st.lists(st.dates(min_value=JAN, max_value=date(2026, 12, 31)), max_size=8), st.integers(1, 120))
def test_a_spell_covers_exactly_the_boundaries_the_customer_is_active_at(found: list[date], window: int) -> None:
    days = sorted(set(found))
    runs = spells(days, window)
    for offset in range(0, 400, 3):
        t = JAN + timedelta(days=offset)
        assert sum(s.active_from <= t < s.active_until for s in runs) == active_at(days, t, window)


def test_a_later_purchase_extends_the_spell() -> None:
    before = Activity(days=(JAN,), purchases=1, net=500)
    after = Activity(days=(JAN, JAN + timedelta(days=10)), purchases=2, net=800)
    change = rollup_change(before, after, 90)
    assert change.removed_spells == ()
    assert change.written_spells == (Spell(active_from=date(2026, 1, 2), active_until=date(2026, 4, 12)),)
    assert [(d.day, d.spells_ended, d.last_purchases) for d in change.days] == [
        (date(2026, 1, 1), 0, -1),
        (date(2026, 1, 11), 0, 1),
        (date(2026, 4, 2), -1, 0),
        (date(2026, 4, 12), 1, 0),
    ]
    assert change.cohorts == ()  # the same month
    assert change.values == (("net", 500, -1), ("net", 800, 1), ("purchases", 1, -1), ("purchases", 2, 1))


def test_a_backdated_first_purchase_moves_the_cohort() -> None:
    march = date(2026, 3, 5)
    before = Activity(days=(march,), purchases=1, net=100)
    after = Activity(days=(JAN, march), purchases=2, net=200)
    change = rollup_change(before, after, 90)
    assert change.cohorts == (
        (date(2026, 1, 1), date(2026, 1, 1), 1),
        (date(2026, 1, 1), date(2026, 3, 1), 1),
        (date(2026, 3, 1), date(2026, 3, 1), -1),
    )
    assert change.removed_spells == (date(2026, 3, 6),)  # one spell from 2 January now
    assert [s.active_from for s in change.written_spells] == [date(2026, 1, 2)]


ACTIVITIES = st.lists(
    st.tuples(
        st.lists(st.dates(min_value=JAN, max_value=date(2027, 6, 30)), max_size=6, unique=True),
        st.integers(0, 10),
        st.integers(0, 10**6),
    ),
    min_size=1,
    max_size=6,
)


def _activity(days: list[date], extra: int, net: int) -> Activity:
    return Activity(days=tuple(sorted(days)), purchases=len(days) + extra if days else 0, net=net)


def _apply(
    store: dict[date, Spell], counts: Counter[tuple[object, ...]], change: RollupChange
) -> tuple[dict[date, Spell], Counter[tuple[object, ...]]]:
    store = {k: v for k, v in store.items() if k not in change.removed_spells}
    store.update({spell.active_from: spell for spell in change.written_spells})
    counts = counts.copy()
    for d in change.days:
        for name in d.__struct_fields__[1:]:
            counts[("day", d.day, name)] += getattr(d, name)
    for cohort, month, delta in change.cohorts:
        counts[("cohort", cohort, month)] += delta
    for measure, value, delta in change.values:
        counts[(measure, value)] += delta
    return store, +counts


@given(ACTIVITIES, st.integers(1, 120))
def test_changes_along_any_path_add_up_to_a_rebuild(path: list[tuple[list[date], int, int]], window: int) -> None:
    store: dict[date, Spell] = {}
    counts: Counter[tuple[object, ...]] = Counter()
    previous = Activity()
    for days, extra, net in path:
        current = _activity(days, extra, net)
        store, counts = _apply(store, counts, rollup_change(previous, current, window))
        previous = current
    rebuilt_store, rebuilt = _apply({}, Counter(), rollup_change(Activity(), previous, window))
    assert store == rebuilt_store == {spell.active_from: spell for spell in spells(previous.days, window)}
    assert counts == rebuilt


@given(st.lists(st.integers(0, 30), min_size=1, max_size=60))
def test_cut_scores_equal_the_quintiles_of_the_ranks(values: list[int]) -> None:
    histogram = sorted(Counter(values).items())
    cuts = quintile_cuts(histogram)
    assert [cut_score(value, cuts) for value in values] == quintile_scores(values)


def test_positions_and_buckets() -> None:
    assert quintile_positions(3) == [0, 1, 1, 2]  # three customers score 1, 2 and 4
    assert quintile_positions(10) == [1, 3, 5, 7]
    assert locate([(5, 2), (7, 3)], 0) == (5, 0)
    assert locate([(5, 2), (7, 3)], 4) == (7, 2)


def test_segment_sizes_from_score_cells() -> None:
    sizes = segment_sizes([(5, 5, 5, 2, 10), (5, 1, 1, 1, 4), (1, 1, 1, 2, 3)])
    assert (sizes["champions"], sizes["new"], sizes["hibernating"], sizes["loyal"]) == (10, 4, 3, 0)
