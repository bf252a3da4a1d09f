"""Orders at checkout, free of I/O: when their points become available, where a refund's
points come from, and the ledger entries of an order's life.

An order's points are earned into `pending` and move to `available` when the program's
return window ends. A refund takes its points back from what is still pending of that
order first, then from `available`; what the customer already spent is, by the program's
return policy, forgiven (`within_balance`) or owed (`allow_negative`, posted to the
customer's `owed` account and settled from the next points that become available).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from service.domain.expiry import local_midnight
from service.domain.ledger import AccountKind, EntryDraft, PostingDraft, customer_account, system_account, transfer

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
