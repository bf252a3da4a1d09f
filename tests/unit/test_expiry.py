"""Expiry dates in the program's time zone, across month ends and daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from service.domain.expiry import ExpiryPolicy, ExpiryRule, expires_at

AMSTERDAM = ZoneInfo("Europe/Amsterdam")


def test_never() -> None:
    assert expires_at(ExpiryRule(ExpiryPolicy.NEVER), datetime(2026, 1, 1, tzinfo=UTC), AMSTERDAM) is None


def test_days_counts_local_days_and_expires_at_local_midnight() -> None:
    # 23:30 local on 31 March is 21:30 UTC: the local date is what counts.
    earned = datetime(2026, 3, 31, 21, 30, tzinfo=UTC)
    expiry = expires_at(ExpiryRule(ExpiryPolicy.DAYS, 30), earned, AMSTERDAM)
    assert expiry == datetime(2026, 5, 1, 0, 0, tzinfo=AMSTERDAM)
    assert expiry is not None and expiry.utcoffset() is not None
    assert expiry.astimezone(UTC) == datetime(2026, 4, 30, 22, 0, tzinfo=UTC)  # summer time, UTC+2


def test_days_across_the_autumn_clock_change() -> None:
    earned = datetime(2026, 10, 20, 10, tzinfo=UTC)  # summer time
    expiry = expires_at(ExpiryRule(ExpiryPolicy.DAYS, 10), earned, AMSTERDAM)
    assert expiry is not None
    assert expiry.astimezone(UTC) == datetime(2026, 10, 30, 23, 0, tzinfo=UTC)  # winter time, UTC+1


def test_end_of_month_and_year() -> None:
    earned = datetime(2026, 1, 31, 23, 30, tzinfo=UTC)  # already 1 February in Amsterdam (UTC+1)
    assert expires_at(ExpiryRule(ExpiryPolicy.END_OF_MONTH, 0), earned, AMSTERDAM) == datetime(
        2026, 3, 1, tzinfo=AMSTERDAM
    )
    assert expires_at(ExpiryRule(ExpiryPolicy.END_OF_MONTH, 11), earned, AMSTERDAM) == datetime(
        2027, 2, 1, tzinfo=AMSTERDAM
    )
    assert expires_at(ExpiryRule(ExpiryPolicy.END_OF_YEAR, 1), earned, AMSTERDAM) == datetime(
        2028, 1, 1, tzinfo=AMSTERDAM
    )
    new_years_eve = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)  # 1 January 2027 locally
    assert expires_at(ExpiryRule(ExpiryPolicy.END_OF_YEAR, 0), new_years_eve, AMSTERDAM) == datetime(
        2028, 1, 1, tzinfo=AMSTERDAM
    )
