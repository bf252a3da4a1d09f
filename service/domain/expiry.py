"""When earned points expire, by the program's policy, in the program's time zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

import msgspec


class ExpiryPolicy(StrEnum):
    NEVER = "never"
    DAYS = "days"  # at the end of the local day `period` days after earning
    END_OF_MONTH = "end_of_month"  # at the end of the month `period` months after earning
    END_OF_YEAR = "end_of_year"  # at the end of the year `period` years after earning


class ExpiryRule(msgspec.Struct, frozen=True):
    policy: ExpiryPolicy = ExpiryPolicy.NEVER
    period: int = 0


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The instant a local day starts, in UTC: answers give every instant in UTC, also the
    ones computed as local midnights and never read back from the database."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def expires_at(rule: ExpiryRule, earned_at: datetime, zone: ZoneInfo) -> datetime | None:
    """The instant points earned at earned_at expire: local midnight starting the day after
    their last valid day (so they are valid through that whole local day), or None."""
    local_day = earned_at.astimezone(zone).date()
    if rule.policy is ExpiryPolicy.NEVER:
        return None
    if rule.policy is ExpiryPolicy.DAYS:
        return local_midnight(local_day + timedelta(days=rule.period + 1), zone)
    if rule.policy is ExpiryPolicy.END_OF_MONTH:
        months = local_day.year * 12 + (local_day.month - 1) + rule.period + 1
        return local_midnight(date(months // 12, months % 12 + 1, 1), zone)
    return local_midnight(date(local_day.year + rule.period + 1, 1, 1), zone)
