"""A customer's ledger history in plain words, free of I/O.

Each entry that touched a customer's accounts is told as one sentence, with the net change
of each of the customer's account kinds. Amounts in a sentence come from those net changes
(what actually moved for this customer); the entry's metadata supplies the names (order,
shop, refund, reason). Dates are local dates in the program's time zone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from service.domain.errors import InvalidInput
from service.domain.ids import MAX_ROW_ID, b64url, unb64url
from service.domain.ledger import CHART, AccountKind, Unit

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
# ISO 4217 currencies whose minor unit is not a hundredth; every other has two digits.
MINOR_DIGITS: Mapping[str, int] = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF"), 0),
    **dict.fromkeys(("UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}
_CREDIT_KINDS = frozenset(kind.value for kind, spec in CHART.items() if spec.unit is Unit.CREDIT)


class EntryFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What the history needs of one entry, as loaded for one customer."""

    entry_id: int
    posted_at: datetime
    kind: str
    metadata: dict[str, Any]
    changes: dict[str, int]  # net change per customer account kind, zeros left out
    available_from: datetime | None = None  # order.award: when the order's points become available


class HistoryItem(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a customer's history."""

    entry_id: int
    posted_at: datetime
    kind: str
    description: str
    changes: dict[str, int]


class Wording(msgspec.Struct, frozen=True):
    """How amounts and dates are written: the program's time zone and currency."""

    zone: ZoneInfo
    currency: str

    def amount(self, amount: int, unit: Unit) -> str:
        """`250 points`, `1 point`, or store credit in the currency's major unit (`12.50 EUR`)."""
        if unit is Unit.POINTS:
            return f"{amount:,} point" + ("" if amount == 1 else "s")
        digits = MINOR_DIGITS.get(self.currency, 2)
        major, minor = divmod(amount, 10**digits)
        text = f"{major:,}.{minor:0{digits}d}" if digits else f"{major:,}"
        return f"{text} {self.currency} of store credit"

    def day(self, instant: datetime) -> str:
        """The local date of an instant in words: `25 March 2026`."""
        return long_date(instant.astimezone(self.zone).date())


def long_date(day: date) -> str:
    """A date in words, the same in every locale: `25 March 2026`."""
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}"


def net_changes(postings: Mapping[str, int]) -> dict[str, int]:
    """The changes without the kinds that net to zero."""
    return {kind: amount for kind, amount in postings.items() if amount}


def _unit(changes: Mapping[str, int]) -> Unit:
    return Unit.CREDIT if any(kind in _CREDIT_KINDS for kind in changes) else Unit.POINTS


def _gain(changes: Mapping[str, int]) -> int:
    return sum(amount for amount in changes.values() if amount > 0)


def _loss(changes: Mapping[str, int]) -> int:
    return -sum(amount for amount in changes.values() if amount < 0)


def _text(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    return None if value is None or value == "" else str(value)


def _count(metadata: Mapping[str, Any], key: str) -> int:
    value = metadata.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _order(metadata: Mapping[str, Any]) -> str:
    order_id = _text(metadata, "order_id")
    return f"order {order_id}" if order_id else "an order"


def _award(entry: EntryFacts, words: Wording) -> str:
    shop = _text(entry.metadata, "shop_name")
    text = f"Earned {words.amount(_gain(entry.changes), Unit.POINTS)} for {_order(entry.metadata)}"
    if shop:
        text += f" at {shop}"
    if entry.available_from is not None:
        text += f" (available from {words.day(entry.available_from)})"
    return text


def _release(entry: EntryFacts, words: Wording) -> str:
    released = -entry.changes.get(AccountKind.PENDING.value, 0)
    settled = entry.changes.get(AccountKind.OWED.value, 0)
    available = entry.changes.get(AccountKind.AVAILABLE.value, 0)
    points = words.amount(released, Unit.POINTS)
    if not settled:
        return f"{points} from {_order(entry.metadata)} {'is' if released == 1 else 'are'} now available"
    if not available:
        return f"{points} from {_order(entry.metadata)} paid off points owed"
    paid = f"{settled:,} paid off points owed"
    return f"{points} from {_order(entry.metadata)} released: {paid}, {available:,} now available"


def _refund(entry: EntryFacts, words: Wording) -> str:
    refund_id = _text(entry.metadata, "refund_id")
    text = f"{words.amount(_loss(entry.changes), Unit.POINTS)} taken back: "
    text += f"refund {refund_id} of {_order(entry.metadata)}" if refund_id else f"a refund of {_order(entry.metadata)}"
    notes = []
    owed = -entry.changes.get(AccountKind.OWED.value, 0)
    if owed > 0:
        notes.append(f"{owed:,} already spent, now owed")
    forgiven = _count(entry.metadata, "forgiven")
    if forgiven > 0:
        notes.append(f"{forgiven:,} already spent, forgiven")
    return f"{text} ({'; '.join(notes)})" if notes else text


def _redemption_return(entry: EntryFacts, words: Wording) -> str:
    refund_id = _text(entry.metadata, "refund_id")
    text = f"{words.amount(_gain(entry.changes), _unit(entry.changes))} spent on {_order(entry.metadata)} given back"
    text = f"{text}: refund {refund_id}" if refund_id else text
    settled = entry.changes.get(AccountKind.OWED.value, 0)
    return f"{text} ({settled:,} paid off points owed)" if settled > 0 else text


def _authorize(entry: EntryFacts, words: Wording) -> str:
    text = f"{words.amount(_gain(entry.changes), _unit(entry.changes))} reserved for a redemption"
    reference = _text(entry.metadata, "reference")
    return f"{text} ({reference})" if reference else text


def _capture(entry: EntryFacts, words: Wording) -> str:
    unit = _unit(entry.changes)
    returned = _gain(entry.changes)
    captured = _loss(entry.changes) - returned  # the part that left for `redeemed`
    if not captured:
        return f"Reservation released: {words.amount(returned, unit)} back"
    text = f"Redeemed {words.amount(captured, unit)}"
    return f"{text}, {words.amount(returned, unit)} back from the reservation" if returned else text


def _void(entry: EntryFacts, words: Wording) -> str:
    return f"Reservation released: {words.amount(_gain(entry.changes), _unit(entry.changes))} back"


def _hold_expire(entry: EntryFacts, words: Wording) -> str:
    return f"Reservation expired: {words.amount(_gain(entry.changes), _unit(entry.changes))} back"


def _expiry(entry: EntryFacts, words: Wording) -> str:
    return f"{words.amount(_loss(entry.changes), _unit(entry.changes))} expired"


def _grant(entry: EntryFacts, words: Wording) -> str:
    text = f"Received {words.amount(_gain(entry.changes), _unit(entry.changes))}"
    reason = _text(entry.metadata, "reason")
    return f"{text}: {reason}" if reason else text


def _deduct(entry: EntryFacts, words: Wording) -> str:
    text = f"{words.amount(_loss(entry.changes), _unit(entry.changes))} deducted"
    reason = _text(entry.metadata, "reason")
    return f"{text}: {reason}" if reason else text


def _reversal(entry: EntryFacts, words: Wording) -> str:
    reason = _text(entry.metadata, "reason")
    return f"Correction of an earlier entry: {reason}" if reason else "Correction of an earlier entry"


_REFERRAL_REASONS = {"referrer": "for referring a friend", "referee": "for joining through a friend's referral"}


def _referral_reward(entry: EntryFacts, words: Wording) -> str:
    text = f"Received {words.amount(_gain(entry.changes), _unit(entry.changes))}"
    milestone = _count(entry.metadata, "milestone")
    if milestone:
        return f"{text} for reaching {milestone} successful referrals"
    return f"{text} {_REFERRAL_REASONS.get(_text(entry.metadata, 'role') or '', 'for a referral')}"


def _referral_clawback(entry: EntryFacts, words: Wording) -> str:
    unit = _unit(entry.changes)
    text = f"{words.amount(_loss(entry.changes), unit)} taken back: a referral was cancelled"
    forgiven = _count(entry.metadata, "forgiven")
    return f"{text} ({words.amount(forgiven, unit)} already spent, forgiven)" if forgiven else text


def _other(entry: EntryFacts, words: Wording) -> str:
    return f"Balance changed ({entry.kind})"


DESCRIBERS: Mapping[str, Callable[[EntryFacts, Wording], str]] = {
    "order.award": _award,
    "order.release": _release,
    "order.refund": _refund,
    "order.redemption_return": _redemption_return,
    "hold.authorize": _authorize,
    "hold.capture": _capture,
    "hold.void": _void,
    "hold.expire": _hold_expire,
    "expiry": _expiry,
    "adjustment.grant": _grant,
    "adjustment.deduct": _deduct,
    "reversal": _reversal,
    "referral.reward": _referral_reward,
    "referral.clawback": _referral_clawback,
}


def describe(entry: EntryFacts, words: Wording) -> str:
    """The entry in one plain English sentence, from the customer's side."""
    return DESCRIBERS.get(entry.kind, _other)(entry, words)


def history_item(entry: EntryFacts, words: Wording) -> HistoryItem:
    """The entry as a line of the customer's history."""
    return HistoryItem(
        entry_id=entry.entry_id,
        posted_at=entry.posted_at,
        kind=entry.kind,
        description=describe(entry, words),
        changes=dict(entry.changes),
    )


# --- Cursor ---------------------------------------------------------------------------


_FIRST_INSTANT, _LAST_INSTANT = datetime(1900, 1, 1, tzinfo=UTC), datetime(3000, 1, 1, tzinfo=UTC)


def encode_cursor(posted_at: datetime, entry_id: int) -> str:
    """An opaque cursor: the history continues with entries before this one."""
    raw = f"{posted_at.isoformat()}|{entry_id}".encode()
    return b64url(raw)


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The (posted_at, entry_id) a cursor stands for; InvalidInput naming `cursor` otherwise."""
    try:
        raw = unb64url(cursor).decode()
        posted, entry = raw.split("|")
        posted_at, entry_id = datetime.fromisoformat(posted), int(entry)
    except ValueError:
        raise InvalidInput("malformed cursor", field="cursor") from None
    if posted_at.utcoffset() is None or not 1 <= entry_id <= MAX_ROW_ID:
        raise InvalidInput("malformed cursor", field="cursor")
    if not _FIRST_INSTANT <= posted_at < _LAST_INSTANT:  # the database could not take it
        raise InvalidInput("malformed cursor", field="cursor")
    return posted_at, entry_id
