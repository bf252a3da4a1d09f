"""Orders at checkout, free of I/O: when their points become available, where a refund's
points come from, and the ledger entries of an order's life.

An order's points are earned into `pending` and move to `available` when the program's
return window ends. A refund takes its points back from what is still pending of that
order first, then from `available`; what the customer already spent is, by the program's
return policy, forgiven (`within_balance`) or owed (`allow_negative`, posted to the
customer's `owed` account and settled from the next points that become available).

An order may name the captured hold whose points (or store credit) paid for it. A refund
gives back the same share of them as it takes of the award (`Clawback.share`), from the
system account the capture credited to the customer's spendable account, as lots with the
dates of the points the capture spent: the latest-expiring of them first, so what stays
spent after a partial refund is what would have expired first, as when a partial capture
returns the rest of a hold. A debt in `owed` is paid off from them first (what the refund's
own clawback leaves of them), as from points released, and only the rest becomes available.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from service.domain.errors import Conflict, HoldNotCaptured, HoldNotCapturedYet, NotFound
from service.domain.expiry import local_midnight
from service.domain.ledger import (
    HOLD_ACCOUNTS,
    AccountKind,
    EntryDraft,
    PostingDraft,
    Slice,
    Unit,
    customer_account,
    expiry_order,
    system_account,
    transfer,
)

DEFAULT_RETURN_WINDOW_DAYS = 14
FUTURE_TOLERANCE = timedelta(minutes=5)  # clock skew allowed between a till and the service


class ReturnPolicy(StrEnum):
    WITHIN_BALANCE = "within_balance"  # take back what is there; forgive the rest
    ALLOW_NEGATIVE = "allow_negative"  # take back what is there; the customer owes the rest


class ReturnSettings(msgspec.Struct, frozen=True, kw_only=True):
    window_days: int = DEFAULT_RETURN_WINDOW_DAYS
    policy: ReturnPolicy = ReturnPolicy.WITHIN_BALANCE


def release_at(placed_at: datetime, window_days: int, zone: ZoneInfo) -> datetime:
    """When an order's points become available: local midnight after the window's last day.

    Goods may come back through the whole local day `window_days` days after the order's
    local date; an order at 23:30 on the 1st with 14 days releases at 00:00 on the 16th.
    With no window (0 days) the points are due at once, released by the job's next run.
    """
    if window_days == 0:
        return placed_at
    return local_midnight(placed_at.astimezone(zone).date() + timedelta(days=window_days + 1), zone)


class ClawbackSplit(msgspec.Struct, frozen=True, kw_only=True):
    """Where a refund's points come from; the parts add up to the points clawed back."""

    from_pending: int
    from_available: int
    owed: int
    forgiven: int

    @property
    def points(self) -> int:
        return self.from_pending + self.from_available + self.owed + self.forgiven

    @property
    def posted(self) -> int:
        """The part that moves in the ledger (forgiven points stay where they went)."""
        return self.from_pending + self.from_available + self.owed


def split_clawback(points: int, pending: int, available: int, policy: ReturnPolicy) -> ClawbackSplit:
    """Take `points` from the order's pending points first, then from available; the rest
    is owed or forgiven by the policy."""
    from_pending = min(points, max(pending, 0))
    from_available = min(points - from_pending, max(available, 0))
    rest = points - from_pending - from_available
    owed = rest if policy is ReturnPolicy.ALLOW_NEGATIVE else 0
    return ClawbackSplit(from_pending=from_pending, from_available=from_available, owed=owed, forgiven=rest - owed)


def award_draft(customer_id: str, points: int, metadata: dict[str, Any], lot_expires_at: datetime | None) -> EntryDraft:
    """Earned points: from `issued` into the customer's `pending`, as a lot with its expiry."""
    return transfer(
        system_account(AccountKind.ISSUED),
        customer_account(customer_id, AccountKind.PENDING),
        points,
        kind="order.award",
        metadata=metadata,
        lot_expires_at=lot_expires_at,
    )


def release_draft(customer_id: str, points: int, owed_balance: int, metadata: dict[str, Any]) -> EntryDraft:
    """Pending points become available; a debt (owed_balance < 0) is settled from them first."""
    settle = min(points, -owed_balance)
    postings = [PostingDraft(customer_account(customer_id, AccountKind.PENDING), -points)]
    if settle:
        postings.append(PostingDraft(customer_account(customer_id, AccountKind.OWED), settle))
    if points - settle:
        postings.append(PostingDraft(customer_account(customer_id, AccountKind.AVAILABLE), points - settle))
    return EntryDraft(kind="order.release", postings=tuple(postings), metadata=metadata | {"settled": settle})


def take_back_draft(
    customer_id: str,
    split: ClawbackSplit,
    metadata: dict[str, Any],
    *,
    kind: str,
    source: AccountKind,
    spendable: AccountKind = AccountKind.AVAILABLE,
) -> EntryDraft | None:
    """The entry that takes points (or credit, from `spendable`) back from a customer to the
    `source` they came from; an unpaid part becomes a debt, a forgiven part stays where it
    went (noted in the metadata). None if nothing moves."""
    postings = [
        PostingDraft(customer_account(customer_id, account), -amount)
        for account, amount in (
            (AccountKind.PENDING, split.from_pending),
            (spendable, split.from_available),
            (AccountKind.OWED, split.owed),
        )
        if amount
    ]
    if not postings:
        return None
    postings.append(PostingDraft(system_account(source), split.posted))
    return EntryDraft(kind=kind, postings=tuple(postings), metadata=metadata | {"forgiven": split.forgiven})


def refund_draft(customer_id: str, split: ClawbackSplit, metadata: dict[str, Any]) -> EntryDraft | None:
    """Points taken back by a refund return to `issued`; an unpaid part becomes a debt. None
    if nothing moves."""
    return take_back_draft(customer_id, split, metadata, kind="order.refund", source=AccountKind.ISSUED)


# --- Orders paid with a captured hold ----------------------------------------------------

REDEMPTION_FIELD = "redemption_hold_id"


class RedemptionHold(msgspec.Struct, frozen=True, kw_only=True):
    """A hold as an order that names it sees it."""

    id: str
    customer_id: str
    unit: Unit
    status: str  # open, captured, voided, expired
    captured: int
    expires_at: datetime
    resolve_entry_id: int | None


def check_redemption_hold(
    hold_id: str, hold: RedemptionHold | None, customer_id: str, now: datetime, paid_for: str | None
) -> RedemptionHold:
    """The hold an order names as what paid for it, if it may: the customer's own (404
    otherwise, the same for a hold that does not exist), captured (an open hold is refused
    until it is, a voided or expired one for good), and paying for no other order
    (`paid_for` names the one it pays for)."""
    if hold is None or hold.customer_id != customer_id:
        raise NotFound(f"hold {hold_id} of customer {customer_id} not found", field=REDEMPTION_FIELD)
    if hold.status == "open" and now >= hold.expires_at:  # the expiry job voids it on its next run
        detail = f"hold {hold_id} expired at {hold.expires_at.isoformat()} without a capture"
        raise HoldNotCaptured(detail, field=REDEMPTION_FIELD, hold_status="expired")
    if hold.status == "open":
        detail = f"hold {hold_id} is open: capture it first"
        raise HoldNotCapturedYet(detail, field=REDEMPTION_FIELD, hold_status="open")
    if hold.status != "captured":
        raise HoldNotCaptured(f"hold {hold_id} was {hold.status}", field=REDEMPTION_FIELD, hold_status=hold.status)
    if paid_for is not None:
        raise Conflict(f"hold {hold_id} already paid for {paid_for}", field=REDEMPTION_FIELD)
    return hold


def spent_slices(consumed: Sequence[Slice], captured: int) -> list[Slice]:
    """The part of a capture's consumed slices that left for the system account: the
    soonest-expiring `captured` points (plan_lots returned the rest of the hold to the
    customer latest-expiring first), soonest first."""
    spent: list[Slice] = []
    left = captured
    for piece in sorted(consumed, key=expiry_order):
        if left == 0:
            break
        taken = min(piece.amount, left)
        spent.append(msgspec.structs.replace(piece, amount=taken))
        left -= taken
    return spent


def returned_slices(spent: Sequence[Slice], returned_before: int, amount: int) -> list[Slice]:
    """The slices a refund gives back: `amount` of the spent ones, latest-expiring first,
    after the `returned_before` points earlier refunds of the order gave back (so the order's
    refunds together give back every spent slice exactly once)."""
    returned: list[Slice] = []
    skip, need = returned_before, amount
    for piece in sorted(spent, key=expiry_order, reverse=True):
        if need == 0:
            break
        skipped = min(skip, piece.amount)
        skip -= skipped
        taken = min(piece.amount - skipped, need)
        if taken:
            returned.append(msgspec.structs.replace(piece, amount=taken))
            need -= taken
    return returned


def split_refund(
    points: int, pending: int, available: int, owed_balance: int, returned: int, policy: ReturnPolicy
) -> tuple[ClawbackSplit, int]:
    """Where a refund's clawback of `points` comes from, and how many of the `returned`
    redeemed points (given back in the same transaction, before the clawback) pay off a debt
    (`owed_balance` < 0) instead of becoming available.

    The clawback is split as if every returned point were available, so it takes from them
    what the customer no longer has rather than forgive it or owe it; the debt is then
    settled from what the clawback leaves of them, as a release settles it from the points
    it releases. So the settling never changes the clawback (it neither forgives more nor
    makes a new debt while paying off an old one), and no returned point is left to spend
    while the customer owes points."""
    split = split_clawback(points, pending, available + returned, policy)
    settled = max(0, min(returned, -owed_balance, available + returned - split.from_available))
    return split, settled


def redemption_return_draft(
    customer_id: str, unit: Unit, amount: int, metadata: dict[str, Any], settled: int = 0
) -> EntryDraft:
    """Redeemed points (or store credit) a refund gives back: from the system account the
    capture credited, `settled` of them to the customer's debt (`owed`, points only) and the
    rest to their spendable account (the settled part is noted in the metadata, as a
    release notes it)."""
    if settled and unit is not Unit.POINTS:
        raise ValueError("only points pay off points owed")
    spendable, _, captured_to = HOLD_ACCOUNTS[unit]
    postings = [PostingDraft(system_account(captured_to), -amount)]
    if settled:
        postings.append(PostingDraft(customer_account(customer_id, AccountKind.OWED), settled))
    if amount - settled:
        postings.append(PostingDraft(customer_account(customer_id, spendable), amount - settled))
    metadata = metadata | {"settled": settled}
    return EntryDraft(kind="order.redemption_return", postings=tuple(postings), metadata=metadata)
