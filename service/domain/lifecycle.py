"""When the lifecycle jobs' time-based events are due, by the program's local calendar.

Days are local days in the program's time zone, not 24-hour periods: a day that a clock
change makes 23 or 25 hours long is still one day, so an event due N days after something
on local day D is due from the first instant of local day D + N.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from service.domain.expiry import local_midnight

_INSTANT = timedelta(microseconds=1)  # the database's resolution, as Python's


def local_date(instant: datetime, zone: ZoneInfo) -> date:
    """The program's local date at `instant`."""
    return instant.astimezone(zone).date()


def local_days_between(earlier: datetime, later: datetime, zone: ZoneInfo) -> int:
    """How many local days lie from `earlier`'s local date to `later`'s (0 on the same day)."""
    return (local_date(later, zone) - local_date(earlier, zone)).days


def win_back_cutoff(now: datetime, days: int, zone: ZoneInfo) -> datetime:
    """The latest last order that makes a customer due for win-back at `now`: the last instant
    of the local day `days` days before today (an order on day D is due from day D + days)."""
    return local_midnight(local_date(now, zone) - timedelta(days=days - 1), zone) - _INSTANT


def expiring_soon_until(now: datetime, days: int, zone: ZoneInfo) -> datetime:
    """The end (inclusive) of the expiring-soon window at `now`: points whose last valid day is
    one of the `days` local days starting today expire at or before the start of local day
    today + days, so points expiring at the start of local day E are told from the start of
    day E - days."""
    return local_midnight(local_date(now, zone) + timedelta(days=days), zone)
