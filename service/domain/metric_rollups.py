"""The per-customer rollups behind retention, cohorts and RFM, free of I/O.

Each customer's activity (purchase days, purchases, net spend) contributes to counts kept
per program: its activity spells for the default window (retention), its first and last
purchase days, its cohort months, and its purchases and net spend (RFM quintiles). A
change of one customer's activity moves the counts by the difference of its contributions
after and before, so counts kept this way equal a rebuild that sums every customer's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from datetime import date, timedelta
from typing import TypeVar

import msgspec

from service.domain.metrics import DEFAULT_WINDOW_DAYS

SPELL_WINDOW_DAYS = DEFAULT_WINDOW_DAYS  # the window spells serve; rebuild_metric_counts (SQL) uses the same
K = TypeVar("K", bound=Hashable)


class Spell(msgspec.Struct, frozen=True, kw_only=True):
    """The boundaries [active_from, active_until) at which a customer is active with the
    spell window W: a run of purchase days each at most W days after the one before gives
    active_from = first day + 1 and active_until = last day + W + 1. The customer's
    previous spell (None for the first) travels with it."""

    active_from: date
    active_until: date
    prev_from: date | None = None
    prev_until: date | None = None


def spells(days: Sequence[date], window_days: int = SPELL_WINDOW_DAYS) -> list[Spell]:
    """The spells of ascending, distinct purchase days."""
    runs: list[tuple[date, date]] = []
    for day in days:
        if runs and (day - runs[-1][1]).days <= window_days:
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    found: list[Spell] = []
    for first, last in runs:
        previous = found[-1] if found else None
        found.append(
            Spell(
                active_from=first + timedelta(days=1),
                active_until=last + timedelta(days=window_days + 1),
                prev_from=previous.active_from if previous else None,
                prev_until=previous.active_until if previous else None,
            )
        )
    return found


class Activity(msgspec.Struct, frozen=True, kw_only=True):
    """One customer's purchase days (ascending, distinct), purchases and net spend."""

    days: tuple[date, ...] = ()
    purchases: int = 0
    net: int = 0


# the columns of a day's counts, in the order of DayCount's fields
STARTED, ENDED, FIRST, LAST = range(4)


class DayCount(msgspec.Struct, frozen=True):
    """A change of one day's counts: spells starting and ending that day, customers whose
    first and whose last purchase day it is."""

    day: date
    spells_started: int
    spells_ended: int
    first_purchases: int
    last_purchases: int


class RollupChange(msgspec.Struct, frozen=True, kw_only=True):
    """What one customer's change of activity changes in the rollups: spells removed (by
    active_from) and written (new or changed), and the counts, as deltas. Values are
    ("purchases", purchases) and ("net", net spend) of customers with a purchase."""

    removed_spells: tuple[date, ...] = ()
    written_spells: tuple[Spell, ...] = ()
    days: tuple[DayCount, ...] = ()
    cohorts: tuple[tuple[date, date, int], ...] = ()  # (cohort month, month with a purchase, delta)
    values: tuple[tuple[str, int, int], ...] = ()  # (measure, value, delta)

    @property
    def empty(self) -> bool:
        return not (self.removed_spells or self.written_spells or self.days or self.cohorts or self.values)


def _day_counts(activity: Activity, found: Sequence[Spell]) -> Counter[tuple[date, int]]:
    counts: Counter[tuple[date, int]] = Counter()
    for spell in found:
        counts[(spell.active_from, STARTED)] += 1
        counts[(spell.active_until, ENDED)] += 1
    if activity.days:
        counts[(activity.days[0], FIRST)] += 1
        counts[(activity.days[-1], LAST)] += 1
    return counts


def _cohorts(activity: Activity) -> Counter[tuple[date, date]]:
    if not activity.days:
        return Counter()
    cohort = activity.days[0].replace(day=1)
    return Counter({(cohort, month): 1 for month in {day.replace(day=1) for day in activity.days}})


def _values(activity: Activity) -> Counter[tuple[str, int]]:
    if not activity.days:
        return Counter()
    return Counter({("purchases", activity.purchases): 1, ("net", activity.net): 1})


def _delta(after: Counter[K], before: Counter[K]) -> dict[K, int]:
    return {key: after[key] - before[key] for key in after.keys() | before.keys() if after[key] != before[key]}


def rollup_change(before: Activity, after: Activity, window_days: int = SPELL_WINDOW_DAYS) -> RollupChange:
    """The changes that take the rollups from `before` to `after` (one customer)."""
    old, new = spells(before.days, window_days), spells(after.days, window_days)
    new_from = {spell.active_from for spell in new}
    by_day: dict[date, list[int]] = {}
    for (day, column), delta in _delta(_day_counts(after, new), _day_counts(before, old)).items():
        by_day.setdefault(day, [0, 0, 0, 0])[column] += delta
    cohorts = _delta(_cohorts(after), _cohorts(before))
    values = _delta(_values(after), _values(before))
    return RollupChange(
        removed_spells=tuple(sorted(spell.active_from for spell in old if spell.active_from not in new_from)),
        written_spells=tuple(spell for spell in new if spell not in old),
        days=tuple(DayCount(day, *columns) for day, columns in sorted(by_day.items())),
        cohorts=tuple(sorted((cohort, month, delta) for (cohort, month), delta in cohorts.items())),
        values=tuple(sorted((measure, value, delta) for (measure, value), delta in values.items())),
    )
