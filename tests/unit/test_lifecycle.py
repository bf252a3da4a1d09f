"""When the lifecycle events are due: by local days in the program's zone, across clock changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.lifecycle import expiring_soon_until, local_days_between, win_back_cutoff

AMSTERDAM = ZoneInfo("Europe/Amsterdam")  # 23-hour day 29 March 2026, 25-hour day 25 October 2026
SANTIAGO = ZoneInfo("America/Santiago")  # midnight skipped on 8 September 2024, repeated 23:00 on 6 April
ZONES = [AMSTERDAM, SANTIAGO, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("America/Havana"), ZoneInfo("UTC")]

# clock changes of these zones (approximately: the instants around them are drawn)
CHANGES = [
    datetime(2026, 3, 29, 1, tzinfo=UTC),  # Amsterdam, spring
    datetime(2026, 10, 25, 1, tzinfo=UTC),  # Amsterdam, autumn
    datetime(2024, 4, 7, 3, tzinfo=UTC),  # Santiago, 23:00 repeated
    datetime(2024, 9, 8, 4, tzinfo=UTC),  # Santiago, midnight skipped
    datetime(2026, 3, 8, 5, tzinfo=UTC),  # Havana, midnight skipped
    datetime(2026, 11, 1, 5, tzinfo=UTC),  # Havana, midnight repeated
    datetime(2026, 4, 4, 15, tzinfo=UTC),  # Lord Howe, half an hour back
]
anywhere = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC))
near_changes = st.builds(
    lambda change, offset: change + offset,
    st.sampled_from(CHANGES),
    st.timedeltas(min_value=timedelta(days=-12), max_value=timedelta(days=12)),
)
instants = st.one_of(anywhere, near_changes)
day_counts = st.one_of(st.integers(1, 12), st.integers(1, 365))
about_a_day = st.timedeltas(min_value=timedelta(hours=-26), max_value=timedelta(hours=26))


def local(zone: ZoneInfo, day: tuple[int, int, int], hour: int = 0, minute: int = 0, *rest: int) -> datetime:
    """A local time in `zone` (`rest`: seconds, microseconds), as the UTC instant the clock gives."""
    second, microsecond = (*rest, 0, 0)[:2]
    return datetime.combine(date(*day), time(hour, minute, second, microsecond), tzinfo=zone).astimezone(UTC)


def test_a_win_back_across_the_autumn_change_is_due_on_day_d_plus_n_not_48_hours_later() -> None:
    order = local(AMSTERDAM, (2026, 10, 24), 0, 30)  # day D; day D + 1 has 25 hours
    late_on_d_plus_1 = local(AMSTERDAM, (2026, 10, 25), 23, 30)
    assert late_on_d_plus_1 - order == timedelta(hours=48)
    assert order > win_back_cutoff(late_on_d_plus_1, 2, AMSTERDAM)
    assert local_days_between(order, late_on_d_plus_1, AMSTERDAM) == 1
    d_plus_2 = local(AMSTERDAM, (2026, 10, 26), 0, 0)
    assert order <= win_back_cutoff(d_plus_2, 2, AMSTERDAM)
    assert local_days_between(order, d_plus_2, AMSTERDAM) == 2


def test_the_win_back_cutoff_is_the_last_instant_of_day_today_minus_n() -> None:
    now = local(AMSTERDAM, (2026, 3, 30), 0, 0)  # after the 23-hour day
    assert win_back_cutoff(now, 2, AMSTERDAM) == local(AMSTERDAM, (2026, 3, 28), 23, 59, 59, 999999)
    # in Santiago the 8th begins at 01:00 (the clocks skip midnight): the 7th ends at 03:59:59.999999 UTC
    now = local(SANTIAGO, (2024, 9, 9), 12, 0)
    assert win_back_cutoff(now, 2, SANTIAGO) == datetime(2024, 9, 8, 3, 59, 59, 999999, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "now", "until"),
    [
        # 7 local days before 00:00 on 1 April (CEST) is 00:00 on 25 March (CET): 167 hours
        (AMSTERDAM, local(AMSTERDAM, (2026, 3, 24), 23, 30), local(AMSTERDAM, (2026, 3, 31), 0, 0)),
        (AMSTERDAM, local(AMSTERDAM, (2026, 3, 25), 0, 0), local(AMSTERDAM, (2026, 4, 1), 0, 0)),
        # 7 local days before 00:00 on 30 October (CET) is 00:00 on 23 October (CEST): 169 hours
        (AMSTERDAM, local(AMSTERDAM, (2026, 10, 23), 0, 30), local(AMSTERDAM, (2026, 10, 30), 0, 0)),
        # the first instant of 8 September in Santiago is 01:00 (04:00 UTC)
        (SANTIAGO, local(SANTIAGO, (2024, 9, 1), 8, 0), datetime(2024, 9, 8, 4, 0, tzinfo=UTC)),
    ],
)
def test_the_expiring_soon_window_ends_at_the_local_midnight_n_days_ahead(
    zone: ZoneInfo, now: datetime, until: datetime
) -> None:
    assert expiring_soon_until(now, 7, zone) == until


@given(order=instants, days=day_counts, off=about_a_day, zone=st.sampled_from(ZONES))
def test_a_customer_is_due_for_win_back_from_local_day_d_plus_n(
    order: datetime, days: int, off: timedelta, zone: ZoneInfo
) -> None:
    now = order + timedelta(days=days) + off  # around when the lapse becomes due
    due = order <= win_back_cutoff(now, days, zone)
    assert due == (now.astimezone(zone).date() >= order.astimezone(zone).date() + timedelta(days=days))
    assert due == (local_days_between(order, now, zone) >= days)


@given(now=instants, days=day_counts, off=about_a_day, zone=st.sampled_from(ZONES))
def test_points_are_told_when_their_last_valid_day_is_one_of_the_next_n_local_days(
    now: datetime, days: int, off: timedelta, zone: ZoneInfo
) -> None:
    expires = now + timedelta(days=days) + off  # around the end of the window
    last_day = (expires - timedelta(microseconds=1)).astimezone(zone).date()  # as the job's query
    today = now.astimezone(zone).date()
    assert (expires <= expiring_soon_until(now, days, zone)) == (last_day < today + timedelta(days=days))


@given(earlier=instants, later=instants, days=day_counts, zone=st.sampled_from(ZONES))
def test_the_windows_never_shrink_as_time_passes(earlier: datetime, later: datetime, days: int, zone: ZoneInfo) -> None:
    earlier, later = min(earlier, later), max(earlier, later)
    assert win_back_cutoff(earlier, days, zone) <= win_back_cutoff(later, days, zone)
    assert expiring_soon_until(earlier, days, zone) <= expiring_soon_until(later, days, zone)
    assert expiring_soon_until(earlier, days, zone) > earlier


def test_days_between_count_local_dates_not_24_hour_periods() -> None:
    late, early = local(AMSTERDAM, (2026, 3, 28), 23, 30), local(AMSTERDAM, (2026, 3, 29), 0, 10)  # 40 minutes
    assert local_days_between(late, early, AMSTERDAM) == 1
    spring = local(AMSTERDAM, (2026, 3, 29), 0, 30), local(AMSTERDAM, (2026, 3, 30), 0, 15)  # 22 h 45 min
    assert local_days_between(*spring, AMSTERDAM) == 1
    autumn = local(AMSTERDAM, (2026, 10, 25), 0, 0), local(AMSTERDAM, (2026, 10, 25), 23, 59)  # 24 h 59 min
    assert local_days_between(*autumn, AMSTERDAM) == 0
    assert local_days_between(spring[1], spring[0], AMSTERDAM) == -1
