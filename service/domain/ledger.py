"""The double-entry ledger's rules, free of I/O.

Points move only as entries of two or more postings that sum to zero per unit. A
posting's amount is signed: positive credits the account (raises its balance), negative
debits it. Customer accounts never go below zero (a customer's debt, `owed`, never above);
system accounts may.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec

from service.domain.errors import InsufficientPoints, InvalidInput


class Unit(StrEnum):
    POINTS = "POINTS"
    CREDIT = "CREDIT"  # store credit in minor currency units


class Side(StrEnum):
    DEBIT = "debit"
    CREDIT = "credit"


class AccountKind(StrEnum):
    """The chart of accounts of a program."""

    AVAILABLE = "available"
    PENDING = "pending"
    HELD = "held"
    CREDIT_AVAILABLE = "credit_available"
    CREDIT_HELD = "credit_held"
    OWED = "owed"  # points a customer owes after a refund of points already spent
    ISSUED = "issued"
    REDEEMED = "redeemed"
    EXPIRED = "expired"
    REFERRAL_REWARDS = "referral_rewards"
    ADJUSTMENTS = "adjustments"
    CREDIT_ISSUED = "credit_issued"
    CREDIT_REDEEMED = "credit_redeemed"


class KindSpec(msgspec.Struct, frozen=True):
    unit: Unit
    normal_side: Side
    per_customer: bool


CHART: Mapping[AccountKind, KindSpec] = {
    AccountKind.AVAILABLE: KindSpec(Unit.POINTS, Side.CREDIT, True),
    AccountKind.PENDING: KindSpec(Unit.POINTS, Side.CREDIT, True),
    AccountKind.HELD: KindSpec(Unit.POINTS, Side.CREDIT, True),
    AccountKind.CREDIT_AVAILABLE: KindSpec(Unit.CREDIT, Side.CREDIT, True),
    AccountKind.CREDIT_HELD: KindSpec(Unit.CREDIT, Side.CREDIT, True),
    AccountKind.OWED: KindSpec(Unit.POINTS, Side.DEBIT, True),
    AccountKind.ISSUED: KindSpec(Unit.POINTS, Side.DEBIT, False),
    AccountKind.REDEEMED: KindSpec(Unit.POINTS, Side.CREDIT, False),
    AccountKind.EXPIRED: KindSpec(Unit.POINTS, Side.CREDIT, False),
    AccountKind.REFERRAL_REWARDS: KindSpec(Unit.POINTS, Side.DEBIT, False),
    AccountKind.ADJUSTMENTS: KindSpec(Unit.POINTS, Side.DEBIT, False),
    AccountKind.CREDIT_ISSUED: KindSpec(Unit.CREDIT, Side.DEBIT, False),
    AccountKind.CREDIT_REDEEMED: KindSpec(Unit.CREDIT, Side.CREDIT, False),
}
CUSTOMER_KINDS = tuple(kind for kind, spec in CHART.items() if spec.per_customer)
# What customers hold, the program's liability; not what a customer owes it after a refund.
HELD_BY_CUSTOMERS = tuple(kind for kind in CUSTOMER_KINDS if kind is not AccountKind.OWED)
SYSTEM_KINDS = tuple(kind for kind, spec in CHART.items() if not spec.per_customer)
HOLD_ACCOUNTS: Mapping[Unit, tuple[AccountKind, AccountKind, AccountKind]] = {
    # unit -> (spendable, held, where captured value goes)
    Unit.POINTS: (AccountKind.AVAILABLE, AccountKind.HELD, AccountKind.REDEEMED),
    Unit.CREDIT: (
        AccountKind.CREDIT_AVAILABLE,
        AccountKind.CREDIT_HELD,
        AccountKind.CREDIT_REDEEMED,
    ),
}


class AccountRef(msgspec.Struct, frozen=True):
    """An account named by its kind, and its customer for per-customer kinds."""

    kind: AccountKind
    customer_id: str | None = None

    @property
    def code(self) -> str:
        if self.customer_id is None:
            return f"system:{self.kind.value}"
        return f"customer:{self.customer_id}:{self.kind.value}"

    @property
    def unit(self) -> Unit:
        return CHART[self.kind].unit

    @property
    def is_customer(self) -> bool:
        return CHART[self.kind].per_customer

    @property
    def holds_lots(self) -> bool:
        """Customer accounts of points held for the customer keep lots; a debt keeps none."""
        spec = CHART[self.kind]
        return spec.per_customer and spec.normal_side is Side.CREDIT


def customer_account(customer_id: str, kind: AccountKind) -> AccountRef:
    return AccountRef(kind=kind, customer_id=customer_id)


def system_account(kind: AccountKind) -> AccountRef:
    return AccountRef(kind=kind)


class PostingDraft(msgspec.Struct, frozen=True):
    account: AccountRef
    amount: int


class EntryDraft(msgspec.Struct, frozen=True, kw_only=True):
    """An entry before it is written: what moves, why, and for whom."""

    kind: str
    postings: tuple[PostingDraft, ...]
    metadata: dict[str, Any] = {}
    lot_expires_at: datetime | None = None  # expiry of points credited fresh by this entry
    reverses_entry_id: int | None = None


def transfer(
    source: AccountRef,
    destination: AccountRef,
    amount: int,
    *,
    kind: str,
    metadata: dict[str, Any] | None = None,
    lot_expires_at: datetime | None = None,
) -> EntryDraft:
    """The common two-posting entry: amount leaves source and arrives at destination."""
    return EntryDraft(
        kind=kind,
        postings=(PostingDraft(source, -amount), PostingDraft(destination, amount)),
        metadata=metadata or {},
        lot_expires_at=lot_expires_at,
    )


def validate_entry(draft: EntryDraft) -> None:
    """Refuse an entry that is not a well-formed double entry."""
    if len(draft.postings) < 2:
        raise InvalidInput("an entry needs at least two postings", field="postings")
    totals: dict[Unit, int] = defaultdict(int)
    for index, posting in enumerate(draft.postings):
        if type(posting.amount) is not int or posting.amount == 0:
            raise InvalidInput("posting amounts are non-zero integers", field=f"postings[{index}].amount")
        if posting.account.is_customer != (posting.account.customer_id is not None):
            raise InvalidInput(
                "customer accounts need a customer, system accounts none",
                field=f"postings[{index}]",
            )
        totals[posting.account.unit] += posting.amount
    unbalanced = {unit.value: total for unit, total in totals.items() if total != 0}
    if unbalanced:
        raise InvalidInput(f"entry does not balance per unit: {unbalanced}", field="postings")


def net_by_account(postings: Iterable[PostingDraft]) -> dict[AccountRef, int]:
    """The net change of each account an entry touches."""
    net: dict[AccountRef, int] = defaultdict(int)
    for posting in postings:
        net[posting.account] += posting.amount
    return dict(net)


def credited_only(draft: EntryDraft) -> AccountRef | None:
    """The customer account of a credit-only entry (a grant), or None for any other entry.

    Credit-only: a well-formed entry (validate_entry passed) that is no reversal and whose
    customer postings all credit one credit-normal customer account; the rest are system
    accounts. Such an entry cannot overdraw, consumes no lots and, by plan_lots, creates
    exactly one lot: the sum it credits, earned now, expiring at `lot_expires_at`. So it
    can be written without deciding anything against the account's state."""
    if draft.reverses_entry_id is not None:
        return None
    credited: AccountRef | None = None
    for posting in draft.postings:
        account = posting.account
        if not account.is_customer:
            continue
        if posting.amount <= 0 or CHART[account.kind].normal_side is not Side.CREDIT:
            return None
        if credited is not None and account != credited:
            return None
        credited = account
    return credited


def check_balances(draft: EntryDraft, balances: Mapping[AccountRef, int]) -> dict[AccountRef, int]:
    """New balances of the customer accounts; InsufficientPoints if one would go below zero.

    A customer account never crosses zero to the other side of its normal side: what is held
    for the customer never goes below zero, and a debt (`owed`, debit-normal) is settled at
    most in full."""
    after: dict[AccountRef, int] = {}
    for account, change in net_by_account(draft.postings).items():
        if not account.is_customer:
            continue
        current = balances[account]
        if not account.holds_lots:
            if current + change > 0:
                raise InvalidInput(
                    f"{account.kind.value} is {-current}, {change} would settle more than is owed", field="amount"
                )
            after[account] = current + change
            continue
        if current + change < 0:
            raise InsufficientPoints(
                f"{account.kind.value} balance is {current} {account.unit.value}, {-change} needed",
                field="amount",
                available=current,
                requested=-change,
                account=account.kind.value,
                unit=account.unit.value,
            )
        after[account] = current + change
    return after


# --- Lots -----------------------------------------------------------------------------


class OpenLot(msgspec.Struct, frozen=True):
    """A lot with points left, as loaded for consumption (soonest expiry first)."""

    id: int
    remaining: int
    earned_at: datetime
    expires_at: datetime | None


class Slice(msgspec.Struct, frozen=True):
    """Part of a lot consumed by an entry."""

    lot_id: int
    amount: int
    earned_at: datetime
    expires_at: datetime | None


class NewLot(msgspec.Struct, frozen=True):
    account: AccountRef
    amount: int
    earned_at: datetime
    expires_at: datetime | None


class LotPlan(msgspec.Struct, frozen=True):
    consumed: tuple[Slice, ...]
    created: tuple[NewLot, ...]


def expiry_order(lot: OpenLot | Slice) -> tuple[int, datetime, datetime, int]:
    """Soonest-expiring first; lots that never expire last; then oldest."""
    never = lot.expires_at is None
    far = lot.earned_at if lot.expires_at is None else lot.expires_at
    return (1 if never else 0, far, lot.earned_at, lot.lot_id if isinstance(lot, Slice) else lot.id)


def consume(lots: Sequence[OpenLot], amount: int, first: Collection[int] = ()) -> list[Slice]:
    """Take amount from the lots, soonest-expiring first (the lots named in `first` before all)."""
    slices: list[Slice] = []
    left = amount
    for lot in sorted(lots, key=lambda lot: (lot.id not in first, expiry_order(lot))):
        if left == 0:
            break
        taken = min(lot.remaining, left)
        if taken > 0:
            slices.append(Slice(lot.id, taken, lot.earned_at, lot.expires_at))
            left -= taken
    if left:
        raise InsufficientPoints(
            f"lots hold {amount - left} points, {amount} needed",
            available=amount - left,
            requested=amount,
        )
    return slices


def plan_lots(
    draft: EntryDraft,
    open_lots: Mapping[AccountRef, Sequence[OpenLot]],
    now: datetime,
    restored: Sequence[Slice] = (),
    reclaimed: Collection[int] = (),
) -> LotPlan:
    """Which lots an entry consumes and creates.

    Debits of customer accounts consume their soonest-expiring lots, after the `reclaimed`
    ones (a reversal takes back the lots its original created first). Credits of customer
    accounts first take over consumed slices (latest-expiring first, so the soonest-expiring
    points are the ones that left to system accounts) and `restored` slices (a reversal
    gives back the lots its original consumed); the rest is a fresh lot earned now that
    expires at the draft's lot_expires_at.
    """
    consumed: list[Slice] = []
    for account, change in net_by_account(draft.postings).items():
        if account.holds_lots and change < 0:
            consumed.extend(consume(open_lots.get(account, ()), -change, reclaimed))
    pool = sorted([*consumed, *restored], key=expiry_order)
    created: list[NewLot] = []
    for account, change in net_by_account(draft.postings).items():
        if not account.holds_lots or change <= 0:
            continue
        need = change
        while need and pool:
            last = pool.pop()
            taken = min(last.amount, need)
            created.append(NewLot(account, taken, last.earned_at, last.expires_at))
            if taken < last.amount:
                pool.append(Slice(last.lot_id, last.amount - taken, last.earned_at, last.expires_at))
            need -= taken
        if need:
            created.append(NewLot(account, need, now, draft.lot_expires_at))
    return LotPlan(consumed=tuple(consumed), created=tuple(created))


def reversal_of(
    original_kind: str,
    original_postings: Sequence[PostingDraft],
    original_entry_id: int,
    reason: str,
) -> EntryDraft:
    """The entry that undoes another: every posting negated, linked to the original."""
    return EntryDraft(
        kind="reversal",
        postings=tuple(PostingDraft(p.account, -p.amount) for p in original_postings),
        metadata={"reason": reason, "reversed_kind": original_kind},
        reverses_entry_id=original_entry_id,
    )
