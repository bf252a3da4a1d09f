"""The tiers domain: windows in the program's time zone, qualification, reviews, downgrades."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.errors import InvalidInput
from service.domain.tiers import (
    TierConfig,
    Window,
    checked_config,
    downgrade_to,
    higher,
    qualified,
    review_at,
    window_start,
)

AMSTERDAM = ZoneInfo("Europe/Amsterdam")


def ladder(**changes: object) -> TierConfig:
    levels = [
        {"code": "bronze", "name": "Bronze", "threshold": 0},
        {"code": "silver", "name": "Silver", "threshold": 300},
        {"code": "gold", "name": "Gold", "threshold": 1000},
        {"code": "platinum", "name": "Platinum", "threshold": 5000},
    ]
    return msgspec.convert({"basis": "points", "window": "lifetime", "levels": levels} | changes, TierConfig)


@pytest.mark.parametrize(
    ("window", "now", "expected"),
    [
        (Window.CALENDAR_YEAR, datetime(2026, 12, 31, 23, 30, tzinfo=UTC), datetime(2026, 12, 31, 23, 0, tzinfo=UTC)),
        (Window.CALENDAR_YEAR, datetime(2026, 12, 31, 22, 30, tzinfo=UTC), datetime(2025, 12, 31, 23, 0, tzinfo=UTC)),
        (Window.ROLLING_12_MONTHS, datetime(2026, 7, 1, 10, tzinfo=UTC), datetime(2025, 7, 1, 22, 0, tzinfo=UTC)),
        (Window.ROLLING_12_MONTHS, datetime(2028, 2, 29, 10, tzinfo=UTC), datetime(2027, 2, 28, 23, 0, tzinfo=UTC)),
        (Window.LIFETIME, datetime(2026, 7, 1, tzinfo=UTC), None),
    ],
)
def test_windows_start_at_local_midnight(window: Window, now: datetime, expected: datetime | None) -> None:
    assert window_start(window, now, AMSTERDAM) == expected


def test_a_tier_is_reviewed_a_local_year_after_it_started() -> None:
    assert review_at(datetime(2026, 3, 29, 0, 30, tzinfo=UTC), AMSTERDAM) == datetime(2027, 3, 28, 22, 0, tzinfo=UTC)
    # 29 February: on 1 March, when the window (from the day after 28 February) no longer holds it
    assert review_at(datetime(2028, 2, 29, 12, tzinfo=UTC), AMSTERDAM) == datetime(2029, 2, 28, 23, 0, tzinfo=UTC)
    assert window_start(Window.ROLLING_12_MONTHS, datetime(2029, 2, 27, 23, tzinfo=UTC), AMSTERDAM) == datetime(
        2028, 2, 28, 23, 0, tzinfo=UTC
    )


@given(st.integers(0, 10_000))
def test_the_qualified_level_is_the_highest_reached(measure: int) -> None:
    config = ladder()
    level = qualified(config, measure)
    assert level.threshold <= measure
    above = config.levels[config.rank(level.code) + 1 :]
    assert not above or above[0].threshold > measure


@pytest.mark.parametrize(
    ("policy", "current", "qualifies", "expected"),
    [
        ("one_level", "platinum", "bronze", "gold"),
        ("one_level", "silver", "bronze", "bronze"),
        ("to_qualified", "platinum", "bronze", "bronze"),
        ("to_qualified", "platinum", "silver", "silver"),
        ("one_level", "removed", "silver", "silver"),
    ],
)
def test_downgrades_by_policy(policy: str, current: str, qualifies: str, expected: str) -> None:
    assert downgrade_to(ladder(downgrade=policy), current, qualifies) == expected


def test_a_grant_is_a_floor_and_unknown_codes_count_as_the_base() -> None:
    config = ladder()
    assert higher(config, ["silver", "gold"]) == "gold"
    assert higher(config, ["gold", "silver"]) == "gold"
    assert higher(config, ["removed"]) == "bronze"


@pytest.mark.parametrize(
    ("levels", "field"),
    [
        ([{"code": "a", "name": "A", "threshold": 5}], "levels[0].threshold"),
        (
            [{"code": "a", "name": "A", "threshold": 0}, {"code": "b", "name": "B", "threshold": 0}],
            "levels[1].threshold",
        ),
        ([{"code": "a", "name": "A", "threshold": 0}, {"code": "a", "name": "B", "threshold": 9}], "levels[1].code"),
    ],
)
def test_a_ladder_must_rise(levels: list[dict[str, object]], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        checked_config(ladder(levels=levels))
    assert refused.value.field == field
