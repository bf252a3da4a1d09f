"""The orders domain: release dates in the program's time zone, refund splits, and entries."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.ledger import AccountKind, net_by_account, validate_entry
from service.domain.orders import (
    ClawbackSplit,
    ReturnPolicy,
    award_draft,
    refund_draft,
    release_at,
    release_draft,
    split_clawback,
)

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("placed_at", "zone", "days", "expected"),
    [
        # 23:30 local on 31 January is 04:30 UTC on 1 February: the window counts from 31 January
        (datetime(2026, 2, 1, 4, 30, tzinfo=UTC), NEW_YORK, 14, datetime(2026, 2, 15, 5, 0, tzinfo=UTC)),
        # across the spring-forward night: 00:00 local on 30 March is 22:00 UTC (CEST)
        (datetime(2026, 3, 15, 12, 0, tzinfo=UTC), AMSTERDAM, 14, datetime(2026, 3, 29, 22, 0, tzinfo=UTC)),
        # across the fall-back night: 00:00 local on 26 October is 23:00 UTC (CET)
        (datetime(2026, 10, 11, 12, 0, tzinfo=UTC), AMSTERDAM, 14, datetime(2026, 10, 25, 23, 0, tzinfo=UTC)),
        # one day: through the next local day
        (datetime(2026, 6, 1, 21, 59, tzinfo=UTC), AMSTERDAM, 1, datetime(2026, 6, 2, 22, 0, tzinfo=UTC)),
        (datetime(2026, 6, 1, 22, 0, tzinfo=UTC), AMSTERDAM, 1, datetime(2026, 6, 3, 22, 0, tzinfo=UTC)),
        # no window: due at once
        (datetime(2026, 6, 1, 21, 59, tzinfo=UTC), AMSTERDAM, 0, datetime(2026, 6, 1, 21, 59, tzinfo=UTC)),
    ],
)
def test_points_release_at_local_midnight_after_the_window(
    placed_at: datetime, zone: ZoneInfo, days: int, expected: datetime
) -> None:
    assert release_at(placed_at, days, zone) == expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (ReturnPolicy.WITHIN_BALANCE, ClawbackSplit(from_pending=30, from_available=50, owed=0, forgiven=20)),
        (ReturnPolicy.ALLOW_NEGATIVE, ClawbackSplit(from_pending=30, from_available=50, owed=20, forgiven=0)),
    ],
)
def test_a_refund_takes_pending_then_available_then_applies_the_policy(
    policy: ReturnPolicy, expected: ClawbackSplit
) -> None:
    assert split_clawback(100, pending=30, available=50, policy=policy) == expected


@given(
    points=st.integers(0, 10_000),
    pending=st.integers(0, 10_000),
    available=st.integers(0, 10_000),
    policy=st.sampled_from(ReturnPolicy),
)
def test_a_split_adds_up_and_never_takes_more_than_is_there(
    points: int, pending: int, available: int, policy: ReturnPolicy
) -> None:
    split = split_clawback(points, pending, available, policy)
    assert split.points == points
    assert 0 <= split.from_pending <= pending
    assert 0 <= split.from_available <= available
    assert min(split.owed, split.forgiven) == 0 and min(split.owed, split.forgiven) >= 0
    if split.owed or split.forgiven:  # nothing is owed or forgiven while points are there
        assert split.from_pending + split.from_available == min(points, pending + available)
    if policy is ReturnPolicy.WITHIN_BALANCE:
        assert split.owed == 0
    else:
        assert split.forgiven == 0


@given(
    points=st.integers(1, 10_000),
    pending=st.integers(0, 10_000),
    available=st.integers(0, 10_000),
    owed=st.integers(0, 10_000),
    policy=st.sampled_from(ReturnPolicy),
)
def test_order_entries_balance_and_keep_accounts_on_their_side(
    points: int, pending: int, available: int, owed: int, policy: ReturnPolicy
) -> None:
    award = award_draft("cus_1", points, {"order_id": "A"}, None)
    validate_entry(award)
    split = split_clawback(points, pending, available, policy)
    if split.posted:
        refund = refund_draft("cus_1", split, {"order_id": "A"})
        assert refund is not None
        validate_entry(refund)
        net = net_by_account(refund.postings)
        assert all(change < 0 for account, change in net.items() if account.is_customer)
        assert refund.metadata["forgiven"] == split.forgiven
    release = release_draft("cus_1", points, -owed, {"order_id": "A"})
    validate_entry(release)
    moved = {account.kind: change for account, change in net_by_account(release.postings).items()}
    assert moved.get(AccountKind.OWED, 0) == min(points, owed)  # a debt is settled first, never beyond
    assert moved.get(AccountKind.AVAILABLE, 0) == points - min(points, owed)
    assert moved[AccountKind.PENDING] == -points
