"""Orders paid with a captured hold (no database): which holds may pay, the one refund share
rule, and which slices of the spent points each refund gives back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.earning import Award, OrderLine, Refund, RefundLine, bonus_kept, claw_back, share_taken
from service.domain.errors import Conflict, DomainError, HoldNotCaptured, HoldNotCapturedYet, NotFound
from service.domain.ledger import (
    AccountKind,
    Slice,
    Unit,
    customer_account,
    net_by_account,
    system_account,
    validate_entry,
)
from service.domain.orders import (
    RedemptionHold,
    ReturnPolicy,
    check_redemption_hold,
    redemption_return_draft,
    returned_slices,
    spent_slices,
    split_clawback,
    split_refund,
)

NOW = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)


def _hold(status: str = "captured", customer: str = "cus_ann", expires_in: int = 60) -> RedemptionHold:
    return RedemptionHold(
        id="hld_1",
        customer_id=customer,
        unit=Unit.POINTS,
        status=status,
        captured=100 if status == "captured" else 0,
        expires_at=NOW + timedelta(seconds=expires_in),
        resolve_entry_id=None if status == "open" else 7,
    )


@pytest.mark.parametrize(
    ("hold", "paid_for", "refusal", "hold_status"),
    [
        (None, None, NotFound, None),
        (_hold(customer="cus_bob"), None, NotFound, None),
        (_hold("open"), None, HoldNotCapturedYet, "open"),
        (_hold("open", expires_in=0), None, HoldNotCaptured, "expired"),
        (_hold("voided"), None, HoldNotCaptured, "voided"),
        (_hold("expired"), None, HoldNotCaptured, "expired"),
        (_hold(), "order W-1 of shop shp_1", Conflict, None),
    ],
)
def test_only_a_captured_hold_of_the_customer_paying_for_nothing_else_may_pay(
    hold: RedemptionHold | None, paid_for: str | None, refusal: type[DomainError], hold_status: str | None
) -> None:
    with pytest.raises(refusal) as refused:
        check_redemption_hold("hld_1", hold, "cus_ann", NOW, paid_for)
    assert type(refused.value) is refusal
    assert refused.value.field == "redemption_hold_id"
    assert refused.value.extra.get("hold_status") == hold_status
    # only a hold that is still open may be captured later: only that refusal is not remembered
    assert refused.value.remembered is (refusal is not HoldNotCapturedYet)


def test_a_captured_hold_of_the_customer_pays() -> None:
    assert check_redemption_hold("hld_1", _hold(), "cus_ann", NOW, None) == _hold()


@given(
    total=st.integers(0, 10**6),
    net=st.integers(0, 10**6),
    cuts=st.lists(st.integers(0, 10**6), max_size=5),
)
def test_the_refund_shares_add_up_to_the_whole_once_everything_is_back(total: int, net: int, cuts: list[int]) -> None:
    refunded = sorted({min(cut, net) for cut in cuts} | {net})
    steps = zip([0, *refunded[:-1]], refunded, strict=True)
    shares = [share_taken(total, after, net) - share_taken(total, before, net) for before, after in steps]
    assert all(share >= 0 for share in shares)
    assert sum(shares) == (total if net else 0)
    for refunded_net in refunded:
        assert bonus_kept(total, refunded_net, net) == total - share_taken(total, refunded_net, net)


def test_the_redeemed_points_and_the_award_share_one_rule() -> None:
    lines = (
        OrderLine(sku="a", category="c", unit_price=700, quantity=1),
        OrderLine(sku="b", category="c", unit_price=400, quantity=1),
    )
    award = Award(total=18, breakdown=(), campaign_bonus={}, rules_version=1)
    first = claw_back(lines, award, Refund(amount=550))
    assert (first.points, first.share(250)) == (9, 125)
    rest = claw_back(lines, award, Refund(amount=550), [Refund(amount=550)])
    assert (rest.points, rest.share(250)) == (9, 125)
    assert (rest.refunded_before, rest.refunded_net) == (550, 1100)


def _slice(lot: int, amount: int, days: int | None) -> Slice:
    return Slice(lot, amount, NOW - timedelta(days=30), None if days is None else NOW + timedelta(days=days))


def test_a_capture_spent_its_soonest_expiring_slices() -> None:
    consumed = [_slice(3, 40, None), _slice(1, 100, 5), _slice(2, 200, 9)]
    assert spent_slices(consumed, 250) == [_slice(1, 100, 5), _slice(2, 150, 9)]
    assert spent_slices(consumed, 340) == [_slice(1, 100, 5), _slice(2, 200, 9), _slice(3, 40, None)]


def test_refunds_give_back_the_latest_expiring_first_each_slice_once() -> None:
    spent = [_slice(1, 100, 5), _slice(2, 150, 9)]
    assert returned_slices(spent, 0, 125) == [_slice(2, 125, 9)]
    assert returned_slices(spent, 125, 0) == []
    assert returned_slices(spent, 125, 125) == [_slice(2, 25, 9), _slice(1, 100, 5)]


@given(
    parts=st.lists(st.tuples(st.integers(1, 50), st.sampled_from([None, 1, 2, 3])), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 300), max_size=4),
)
def test_the_refunds_of_an_order_give_back_every_spent_slice_exactly_once(
    parts: list[tuple[int, int | None]], cuts: list[int]
) -> None:
    spent = [_slice(lot, amount, days) for lot, (amount, days) in enumerate(parts)]
    total = sum(piece.amount for piece in spent)
    marks = sorted({min(cut, total) for cut in cuts} | {total})
    back: dict[int, int] = {}
    for before, after in zip([0, *marks[:-1]], marks, strict=True):
        for piece in returned_slices(spent, before, after - before):
            back[piece.lot_id] = back.get(piece.lot_id, 0) + piece.amount
    assert back == {piece.lot_id: piece.amount for piece in spent}


@pytest.mark.parametrize(
    ("unit", "source", "destination"),
    [
        (Unit.POINTS, AccountKind.REDEEMED, AccountKind.AVAILABLE),
        (Unit.CREDIT, AccountKind.CREDIT_REDEEMED, AccountKind.CREDIT_AVAILABLE),
    ],
)
def test_the_return_moves_from_where_the_capture_put_it(
    unit: Unit, source: AccountKind, destination: AccountKind
) -> None:
    draft = redemption_return_draft("cus_ann", unit, 125, {"order_id": "W-1"})
    validate_entry(draft)
    assert draft.kind == "order.redemption_return"
    net = {account.kind: amount for account, amount in net_by_account(draft.postings).items()}
    assert net == {source: -125, destination: 125}
    assert draft.postings[0].account == system_account(source)


def test_an_order_of_net_value_0_shares_by_the_items_that_came_back() -> None:
    """A free item paid with points (a reward from the catalogue): nothing to measure in
    value, so a refund's share is the items returned of those bought, and returning every
    item gives back everything."""
    lines = (
        OrderLine(sku="mug", category="rewards", unit_price=1200, quantity=2, discount=2400),
        OrderLine(sku="tote", category="rewards", unit_price=0, quantity=1),
    )
    award = Award(total=0, breakdown=(), campaign_bonus={}, rules_version=1)
    one_mug = Refund(lines=(RefundLine(line=0, quantity=1),))
    first = claw_back(lines, award, one_mug)
    assert (first.points, first.refunded_net, first.share(500)) == (0, 0, 166)  # 1 of 3 items
    rest = claw_back(
        lines, award, Refund(lines=(RefundLine(line=0, quantity=1), RefundLine(line=1, quantity=1))), [one_mug]
    )
    assert first.share(500) + rest.share(500) == 500


def test_points_given_back_pay_off_a_debt_first_and_the_rest_becomes_available() -> None:
    draft = redemption_return_draft("cus_ann", Unit.POINTS, 200, {"order_id": "W-1"}, settled=18)
    validate_entry(draft)
    assert net_by_account(draft.postings) == {
        system_account(AccountKind.REDEEMED): -200,
        customer_account("cus_ann", AccountKind.OWED): 18,
        customer_account("cus_ann", AccountKind.AVAILABLE): 182,
    }
    assert draft.metadata == {"order_id": "W-1", "settled": 18}
    paid_off = redemption_return_draft("cus_ann", Unit.POINTS, 40, {}, settled=40)
    validate_entry(paid_off)
    assert net_by_account(paid_off.postings) == {
        system_account(AccountKind.REDEEMED): -40,
        customer_account("cus_ann", AccountKind.OWED): 40,
    }


def test_store_credit_given_back_pays_off_no_debt_of_points() -> None:
    with pytest.raises(ValueError, match="points"):
        redemption_return_draft("cus_ann", Unit.CREDIT, 400, {}, settled=1)


@pytest.mark.parametrize(
    ("points", "pending", "available", "owed", "returned", "settled", "split"),
    [
        (9, 18, 0, -18, 200, 18, (9, 0, 0, 0)),  # the clawback from pending: the debt paid in full
        (18, 0, 0, -18, 30, 12, (0, 18, 0, 0)),  # the clawback first from what comes back, 12 left
        (18, 0, 100, -18, 30, 18, (0, 18, 0, 0)),  # the clawback paid from available points
        (50, 0, 0, -18, 30, 0, (0, 30, 20, 0)),  # nothing left to settle; the rest owed
        (9, 18, 0, 0, 200, 0, (9, 0, 0, 0)),  # no debt
        (9, 18, 0, -18, 0, 0, (9, 0, 0, 0)),  # nothing given back
    ],
)
def test_a_refund_settles_a_debt_from_what_its_clawback_leaves_of_the_points_given_back(
    points: int,
    pending: int,
    available: int,
    owed: int,
    returned: int,
    settled: int,
    split: tuple[int, int, int, int],
) -> None:
    got, paid_off = split_refund(points, pending, available, owed, returned, ReturnPolicy.ALLOW_NEGATIVE)
    assert paid_off == settled
    assert (got.from_pending, got.from_available, got.owed, got.forgiven) == split


@given(
    points=st.integers(0, 500),
    pending=st.integers(0, 500),
    available=st.integers(0, 500),
    owed=st.integers(-500, 0),
    returned=st.integers(0, 500),
    policy=st.sampled_from(ReturnPolicy),
)
def test_settling_a_debt_never_changes_the_clawback_and_takes_all_it_may(
    points: int, pending: int, available: int, owed: int, returned: int, policy: ReturnPolicy
) -> None:
    split, settled = split_refund(points, pending, available, owed, returned, policy)
    assert split == split_clawback(points, pending, available + returned, policy)  # as without a debt
    assert 0 <= settled <= min(returned, -owed)
    left = available + returned - settled - split.from_available
    assert left >= 0  # the clawback is still paid from available
    # as much as may be: all given back, all owed, or nothing left available
    assert settled in (returned, -owed) or left == 0
