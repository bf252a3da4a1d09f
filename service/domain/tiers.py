"""Tiers, free of I/O: the levels a program configures, what a customer qualifies for, and
when a tier is reviewed.

A program orders its levels by threshold (the first is 0: everyone's base level). The
qualifying measure is either the points a customer earned on orders or their net spend,
both net of refunds, over a window: the calendar year, the rolling 12 months, or lifetime,
in the program's time zone.

- Upgrades happen at once, on the order that crosses a threshold (the crossing order itself
  earns at the tier the customer had when it was placed).
- A tier is kept until its review: one year after the local day it started. A customer still
  qualifying at the review keeps it for another year; one who no longer does keeps it
  through the grace period and is then moved down, one level at a time or straight to the
  level they qualify for, by the program's policy (a customer who qualifies again before
  the grace period ends keeps the tier).
- A tier granted for a period (a reward, or by an admin with a reason) is a floor: the
  customer's tier is the higher of the earned one and any granted one in force.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Annotated
from zoneinfo import ZoneInfo

import msgspec

from service.domain.earning import NEUTRAL_BP, Text
from service.domain.errors import InvalidInput
from service.domain.expiry import local_midnight
from service.domain.patterns import END

Code = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}" + END)]
MAX_LEVELS = 20
MAX_PERKS = 20  # per level; bounded where a ladder is set (tiers' TierConfigRequest), not when read back


class Basis(StrEnum):
    POINTS = "points"  # points earned on orders, net of refunds
    SPEND = "spend"  # net order value in minor units, net of refunds


class Window(StrEnum):
    CALENDAR_YEAR = "calendar_year"
    ROLLING_12_MONTHS = "rolling_12_months"
    LIFETIME = "lifetime"


class DowngradePolicy(StrEnum):
    ONE_LEVEL = "one_level"
    TO_QUALIFIED = "to_qualified"


class TierLevel(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    code: Code
    name: Text
    threshold: Annotated[int, msgspec.Meta(ge=0)]
    earn_multiplier_bp: Annotated[int, msgspec.Meta(ge=0, le=100 * NEUTRAL_BP)] = NEUTRAL_BP
    perks: tuple[Text, ...] = ()


class TierConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    basis: Basis
    window: Window
    levels: Annotated[tuple[TierLevel, ...], msgspec.Meta(min_length=1, max_length=MAX_LEVELS)]
    grace_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 30
    downgrade: DowngradePolicy = DowngradePolicy.ONE_LEVEL
    warning_days: Annotated[int, msgspec.Meta(ge=0, le=365)] = 14

    def rank(self, code: str) -> int:
        """The level's position (0 is the base level); -1 for a code not configured."""
        return next((index for index, level in enumerate(self.levels) if level.code == code), -1)

    def level(self, code: str) -> TierLevel:
        return self.levels[max(self.rank(code), 0)]


def checked_config(config: TierConfig) -> TierConfig:
    """The configuration if its levels make a ladder; InvalidInput naming the field if not."""
    if config.levels[0].threshold != 0:
        raise InvalidInput("the first level is everyone's: its threshold is 0", field="levels[0].threshold")
    codes: set[str] = set()
    for index, level in enumerate(config.levels):
        if level.code in codes:
            raise InvalidInput(f"level {level.code!r} is defined twice", field=f"levels[{index}].code")
        codes.add(level.code)
        if index and level.threshold <= config.levels[index - 1].threshold:
            raise InvalidInput("thresholds rise strictly from level to level", field=f"levels[{index}].threshold")
    return config


def window_start(window: Window, now: datetime, zone: ZoneInfo) -> datetime | None:
    """The first instant whose orders count at `now`; None for lifetime."""
    today = now.astimezone(zone).date()
    if window is Window.CALENDAR_YEAR:
        return local_midnight(date(today.year, 1, 1), zone)
    if window is Window.ROLLING_12_MONTHS:  # the same local day a year ago (28 Feb for 29 Feb)
        return local_midnight(_years_later(today, -1) + timedelta(days=1), zone)
    return None


def _years_later(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def review_at(since: datetime, zone: ZoneInfo) -> datetime:
    """When a tier that started at `since` is reviewed: local midnight a year after its day,
    the first midnight at which the rolling window no longer holds that day. For 29 February
    that is 1 March: on 28 February the window still holds the orders of 29 February."""
    day = since.astimezone(zone).date()
    if (day.month, day.day) == (2, 29):
        return local_midnight(date(day.year + 1, 3, 1), zone)
    return local_midnight(_years_later(day, 1), zone)


def grace_end(review: datetime, grace_days: int, zone: ZoneInfo) -> datetime:
    """When the grace period after a review ends: `grace_days` local days after it."""
    return local_midnight(review.astimezone(zone).date() + timedelta(days=grace_days), zone)


def qualified(config: TierConfig, measure: int) -> TierLevel:
    """The highest level whose threshold the measure reaches."""
    reached = [level for level in config.levels if level.threshold <= measure]
    return reached[-1]


def higher(config: TierConfig, codes: Sequence[str]) -> str:
    """The highest configured of these codes (the base level if none is)."""
    return config.levels[max([config.rank(code) for code in codes] + [0])].code


def downgrade_to(config: TierConfig, current: str, qualified_code: str) -> str:
    """Where a customer who no longer qualifies goes at the end of the grace period."""
    if config.downgrade is DowngradePolicy.TO_QUALIFIED:
        return qualified_code
    return config.levels[max(config.rank(current) - 1, config.rank(qualified_code), 0)].code


class TierProgress(msgspec.Struct, frozen=True, kw_only=True):
    """What the customer app shows."""

    tier: TierLevel
    earned_tier: str
    granted_until: datetime | None  # when a granted floor above the earned tier ends
    next_tier: TierLevel | None
    measure: int
    basis: Basis
    window: Window
    still_needed: int | None  # to reach the next tier
    kept_until: datetime | None  # the current tier is kept at least until then


def progress(
    config: TierConfig,
    effective: str,
    earned: str,
    measure: int,
    kept_until: datetime | None,
    granted_until: datetime | None,
) -> TierProgress:
    current = config.level(effective)
    above = config.levels[config.rank(current.code) + 1 :]
    following = above[0] if above else None
    return TierProgress(
        tier=current,
        earned_tier=earned,
        granted_until=granted_until,
        next_tier=following,
        measure=measure,
        basis=config.basis,
        window=config.window,
        still_needed=None if following is None else max(following.threshold - measure, 0),
        kept_until=kept_until,
    )
