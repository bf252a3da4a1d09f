"""The pure ledger rules: well-formed entries, overdraft checks, lot planning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.errors import InsufficientPoints, InvalidInput
from service.domain.ledger import (
    AccountKind,
    EntryDraft,
    OpenLot,
    PostingDraft,
    Slice,
    check_balances,
    consume,
    credited_only,
    customer_account,
    plan_lots,
    reversal_of,
    system_account,
    transfer,
    validate_entry,
)

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
ANN_AVAILABLE = customer_account("cus_ann", AccountKind.AVAILABLE)
ANN_HELD = customer_account("cus_ann", AccountKind.HELD)
ANN_PENDING = customer_account("cus_ann", AccountKind.PENDING)
ISSUED = system_account(AccountKind.ISSUED)
REDEEMED = system_account(AccountKind.REDEEMED)


def lot(lot_id: int, remaining: int, expires_in_days: int | None) -> OpenLot:
    expires = None if expires_in_days is None else NOW + timedelta(days=expires_in_days)
    return OpenLot(lot_id, remaining, NOW - timedelta(days=100 - lot_id), expires)


def test_entry_needs_two_postings_and_balance_per_unit() -> None:
    with pytest.raises(InvalidInput, match="at least two"):
        validate_entry(EntryDraft(kind="x", postings=(PostingDraft(ANN_AVAILABLE, 5),)))
    with pytest.raises(InvalidInput, match="does not balance"):
        validate_entry(EntryDraft(kind="x", postings=(PostingDraft(ISSUED, -5), PostingDraft(ANN_AVAILABLE, 4))))
    credit = customer_account("cus_ann", AccountKind.CREDIT_AVAILABLE)
    with pytest.raises(InvalidInput, match="does not balance"):  # balanced in total, not per unit
        validate_entry(EntryDraft(kind="x", postings=(PostingDraft(ISSUED, -5), PostingDraft(credit, 5))))
    with pytest.raises(InvalidInput, match="non-zero"):
        validate_entry(EntryDraft(kind="x", postings=(PostingDraft(ISSUED, 0), PostingDraft(ANN_AVAILABLE, 0))))
    validate_entry(transfer(ISSUED, ANN_AVAILABLE, 5, kind="grant"))


def test_customer_accounts_never_go_below_zero_system_accounts_may() -> None:
    draft = transfer(ANN_AVAILABLE, REDEEMED, 30, kind="spend")
    assert check_balances(draft, {ANN_AVAILABLE: 30}) == {ANN_AVAILABLE: 0}
    with pytest.raises(InsufficientPoints) as refused:
        check_balances(draft, {ANN_AVAILABLE: 29})
    assert refused.value.extra["available"] == 29
    assert refused.value.extra["requested"] == 30


def test_debits_consume_the_soonest_expiring_lots_first() -> None:
    lots = [lot(1, 10, None), lot(2, 10, 30), lot(3, 10, 5), lot(4, 10, 60)]
    assert [(s.lot_id, s.amount) for s in consume(lots, 25)] == [(3, 10), (2, 10), (4, 5)]
    with pytest.raises(InsufficientPoints):
        consume(lots, 41)


def test_partial_capture_spends_soonest_and_returns_the_latest_expiring() -> None:
    held_lots = [lot(1, 50, 10), lot(2, 50, 40)]
    draft = EntryDraft(
        kind="hold.capture",
        postings=(
            PostingDraft(ANN_HELD, -100),
            PostingDraft(REDEEMED, 70),
            PostingDraft(ANN_AVAILABLE, 30),
        ),
    )
    plan = plan_lots(draft, {ANN_HELD: held_lots}, NOW)
    assert [(s.lot_id, s.amount) for s in plan.consumed] == [(1, 50), (2, 50)]
    assert [(n.account, n.amount, n.expires_at) for n in plan.created] == [(ANN_AVAILABLE, 30, held_lots[1].expires_at)]


def test_fresh_credit_creates_a_lot_with_the_entry_expiry() -> None:
    expiry = NOW + timedelta(days=365)
    plan = plan_lots(transfer(ISSUED, ANN_PENDING, 40, kind="award", lot_expires_at=expiry), {}, NOW)
    assert plan.consumed == ()
    assert [(n.account, n.amount, n.earned_at, n.expires_at) for n in plan.created] == [(ANN_PENDING, 40, NOW, expiry)]


def test_reversal_gives_back_the_lots_its_original_consumed() -> None:
    spend = transfer(ANN_AVAILABLE, REDEEMED, 15, kind="spend")
    restored = [Slice(7, 15, NOW - timedelta(days=3), NOW + timedelta(days=9))]
    undo = reversal_of("spend", spend.postings, 42, "mistake")
    assert undo.reverses_entry_id == 42
    plan = plan_lots(undo, {}, NOW, restored)
    assert [(n.amount, n.expires_at) for n in plan.created] == [(15, restored[0].expires_at)]


@given(
    remainders=st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=12),
    expiries=st.lists(st.one_of(st.none(), st.integers(min_value=-30, max_value=400)), min_size=12, max_size=12),
    data=st.data(),
)
def test_lot_plans_conserve_points(remainders: list[int], expiries: list[int | None], data: st.DataObject) -> None:
    lots = [lot(index, remaining, expiries[index]) for index, remaining in enumerate(remainders)]
    total = sum(remainders)
    amount = data.draw(st.integers(min_value=1, max_value=total))
    captured = data.draw(st.integers(min_value=0, max_value=amount))
    postings = [PostingDraft(ANN_HELD, -amount)]
    if captured:
        postings.append(PostingDraft(REDEEMED, captured))
    if amount - captured:
        postings.append(PostingDraft(ANN_AVAILABLE, amount - captured))
    plan = plan_lots(EntryDraft(kind="capture", postings=tuple(postings)), {ANN_HELD: lots}, NOW)
    assert sum(s.amount for s in plan.consumed) == amount
    assert sum(n.amount for n in plan.created) == amount - captured
    by_lot = {one.id: one.remaining for one in lots}
    for piece in plan.consumed:
        by_lot[piece.lot_id] -= piece.amount
    assert all(left >= 0 for left in by_lot.values())
    # soonest-expiring first: any lot left untouched expires no sooner than every lot consumed in full
    spent = {piece.lot_id for piece in plan.consumed}
    untouched = [one for one in lots if one.id not in spent]
    if untouched and plan.consumed:
        from service.domain.ledger import expiry_order

        assert max(expiry_order(one) for one in lots if one.id in spent) <= min(map(expiry_order, untouched))


def test_credited_only_names_the_one_customer_account_a_grant_credits() -> None:
    assert credited_only(transfer(ISSUED, ANN_AVAILABLE, 10, kind="grant")) == ANN_AVAILABLE
    split = EntryDraft(
        kind="grant",
        postings=(PostingDraft(ISSUED, -7), PostingDraft(ANN_PENDING, 3), PostingDraft(ANN_PENDING, 4)),
    )
    assert credited_only(split) == ANN_PENDING


def test_credited_only_refuses_debits_moves_reversals_and_system_only_entries() -> None:
    assert credited_only(transfer(ANN_AVAILABLE, REDEEMED, 10, kind="spend")) is None
    assert credited_only(transfer(ANN_AVAILABLE, ANN_HELD, 10, kind="hold.authorize")) is None
    two_customers = EntryDraft(
        kind="grant",
        postings=(
            PostingDraft(ISSUED, -20),
            PostingDraft(ANN_AVAILABLE, 10),
            PostingDraft(customer_account("cus_bob", AccountKind.AVAILABLE), 10),
        ),
    )
    assert credited_only(two_customers) is None
    undo = reversal_of("spend", transfer(ANN_AVAILABLE, REDEEMED, 5, kind="spend").postings, 42, "mistake")
    assert credited_only(undo) is None
    assert credited_only(transfer(ISSUED, REDEEMED, 5, kind="internal")) is None


@given(
    amounts=st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=4),
    balance=st.integers(min_value=0, max_value=10_000),
    expires_in=st.one_of(st.none(), st.integers(min_value=1, max_value=400)),
)
def test_a_credit_only_entry_is_what_the_general_rules_decide(
    amounts: list[int], balance: int, expires_in: int | None
) -> None:
    """What the one-statement writer assumes: no overdraft, nothing consumed, one lot of the
    credited sum, earned now, expiring at the draft's lot expiry."""
    expiry = None if expires_in is None else NOW + timedelta(days=expires_in)
    postings = (PostingDraft(ISSUED, -sum(amounts)), *(PostingDraft(ANN_AVAILABLE, a) for a in amounts))
    draft = EntryDraft(kind="grant", postings=postings, lot_expires_at=expiry)
    validate_entry(draft)
    assert credited_only(draft) == ANN_AVAILABLE
    assert check_balances(draft, {ANN_AVAILABLE: balance}) == {ANN_AVAILABLE: balance + sum(amounts)}
    plan = plan_lots(draft, {ANN_AVAILABLE: [lot(1, balance + 1, 3)]}, NOW)
    assert plan.consumed == ()
    assert [(n.account, n.amount, n.earned_at, n.expires_at) for n in plan.created] == [
        (ANN_AVAILABLE, sum(amounts), NOW, expiry)
    ]
