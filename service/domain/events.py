"""Lifecycle events: their types, a payload Struct per type, and the catalogue that documents them.

An event is something that happened to a customer or a program that a CRM may act on (a
welcome flow, a repeat-purchase flow, a win-back flow, ...). The payload Structs are the
contract with receivers: fields are only ever added, never renamed or removed.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

import msgspec

from service.domain.ledger import EntryDraft, Unit, credited_only


class EventType(StrEnum):
    """Every event type the service defines (some are not emitted yet: see `CATALOGUE`)."""

    CUSTOMER_ENROLLED = "customer.enrolled"
    PURCHASE_FIRST = "purchase.first"
    PURCHASE_REPEAT = "purchase.repeat"
    POINTS_EARNED = "points.earned"
    POINTS_REDEEMED = "points.redeemed"
    POINTS_RETURNED = "points.returned"
    POINTS_EXPIRING_SOON = "points.expiring_soon"
    POINTS_EXPIRED = "points.expired"
    WIN_BACK_DUE = "customer.win_back_due"
    CROSS_SELL_OPPORTUNITY = "customer.cross_sell_opportunity"
    TIER_UPGRADED = "tier.upgraded"
    TIER_DOWNGRADED = "tier.downgraded"
    TIER_DOWNGRADE_WARNING = "tier.downgrade_warning"
    REFERRAL_REDEEMED = "referral.redeemed"
    REFERRAL_QUALIFIED = "referral.qualified"
    REFERRAL_REWARDED = "referral.rewarded"
    REFERRAL_CANCELLED = "referral.cancelled"
    CHURN_RISK_RED = "customer.churn_risk_red"


class CustomerEnrolled(msgspec.Struct, frozen=True, kw_only=True):
    """A customer joined the program (start the welcome flow)."""

    customer_id: str
    external_id: str
    shop_id: str | None
    email: str | None
    name: str | None
    enrolled_at: datetime


class Purchase(msgspec.Struct, frozen=True, kw_only=True):
    """An order was placed and stored; `order_number` counts the customer's orders, this one included."""

    customer_id: str
    shop_id: str
    order_id: str
    order_number: int
    placed_at: datetime
    currency: str
    net: int
    points: int
    categories: list[str]


class PointsEarned(msgspec.Struct, frozen=True, kw_only=True):
    """Points were credited to the customer: earned by an order (pending until `available_from`),
    granted by an admin or rewarded for a referral (available at once)."""

    customer_id: str
    points: int
    source: str  # "order", "grant" or "referral" (EARNED_BY_ENTRY_KIND); more may come
    shop_id: str | None  # the order's; None when the points are not from an order
    order_id: str | None
    entry_id: int
    available_from: datetime
    expires_at: datetime | None


# Entries whose credit to a customer's points announces itself with `points.earned` as the
# entry is written (service/db/ledger.py, in the writing statement), by entry kind, with the
# `source` the event names. An order's award ("order") is announced by the order's use case,
# after `purchase.first`/`purchase.repeat`; debits and store credit announce nothing.
EARNED_BY_ENTRY_KIND: dict[str, str] = {"adjustment.grant": "grant", "referral.reward": "referral"}


def points_earned_by(draft: EntryDraft, entry_id: int, posted_at: datetime) -> PointsEarned | None:
    """The `points.earned` a well-formed entry announces when written (entry_id at posted_at),
    or None: only the kinds of EARNED_BY_ENTRY_KIND that credit one customer's points, which
    are available at once and expire with the entry's lot."""
    source = EARNED_BY_ENTRY_KIND.get(draft.kind)
    credited = credited_only(draft) if source is not None else None
    if source is None or credited is None or credited.customer_id is None or credited.unit is not Unit.POINTS:
        return None
    return PointsEarned(
        customer_id=credited.customer_id,
        points=sum(posting.amount for posting in draft.postings if posting.account == credited),
        source=source,
        shop_id=None,
        order_id=None,
        entry_id=entry_id,
        available_from=posted_at,
        expires_at=draft.lot_expires_at,
    )


class PointsRedeemed(msgspec.Struct, frozen=True, kw_only=True):
    """Points were spent: a hold was captured for more than zero."""

    customer_id: str
    points: int
    hold_id: str
    entry_id: int
    reference: str | None


class PointsReturned(msgspec.Struct, frozen=True, kw_only=True):
    """Points a customer spent on an order (a captured hold that paid for it) came back to
    them because the order was refunded: this refund's share of them (a debt in `owed` paid
    off from them first)."""

    customer_id: str
    points: int
    shop_id: str
    order_id: str
    refund_id: str
    hold_id: str
    entry_id: int
    owed_settled: int = 0  # of `points`, what paid off points the customer owed; the rest is available


class PointsExpiringSoon(msgspec.Struct, frozen=True, kw_only=True):
    """Points expire within the warning period; `last_day` is their last valid local day."""

    customer_id: str
    points: int
    last_day: date
    expires_at: datetime


class PointsExpired(msgspec.Struct, frozen=True, kw_only=True):
    """The unspent rest of lots past their date moved to `expired`."""

    customer_id: str
    points: int
    entry_id: int


class WinBackDue(msgspec.Struct, frozen=True, kw_only=True):
    """The customer has not bought for `days_since_last_order` days (once per lapse)."""

    customer_id: str
    last_order_at: datetime
    days_since_last_order: int
    orders: int


class CrossSellOpportunity(msgspec.Struct, frozen=True, kw_only=True):
    """After `orders` orders the customer has bought from one category only (once per customer)."""

    customer_id: str
    category: str
    orders: int


class TierChanged(msgspec.Struct, frozen=True, kw_only=True):
    """The customer's tier changed (upgrade or downgrade)."""

    customer_id: str
    from_tier: str | None
    to_tier: str | None
    reason: str


class TierDowngradeWarning(msgspec.Struct, frozen=True, kw_only=True):
    """The customer will be downgraded at `downgrade_at` unless they qualify before it."""

    customer_id: str
    tier: str
    downgrade_at: datetime


class ReferralEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A referral changed state; `customer_id` is the referrer."""

    customer_id: str
    referral_id: str
    referee_id: str


class ChurnRiskRed(msgspec.Struct, frozen=True, kw_only=True):
    """The customer's churn-risk traffic light turned red."""

    customer_id: str
    days_since_last_order: int
    rule: str  # the rule that set the colour (e.g. "inactive 60+ days", "open complaint")


class EventEnvelope(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """What receivers get, in webhooks and in the feed: the Standard Webhooks shape (`type`,
    `timestamp`, `data`) with the event's id, its place in the program's feed and its customer."""

    id: str
    seq: int
    timestamp: datetime
    customer_id: str | None


class CustomerEnrolledEvent(EventEnvelope, frozen=True, tag="customer.enrolled"):
    data: CustomerEnrolled


class PurchaseFirstEvent(EventEnvelope, frozen=True, tag="purchase.first"):
    data: Purchase


class PurchaseRepeatEvent(EventEnvelope, frozen=True, tag="purchase.repeat"):
    data: Purchase


class PointsEarnedEvent(EventEnvelope, frozen=True, tag="points.earned"):
    data: PointsEarned


class PointsRedeemedEvent(EventEnvelope, frozen=True, tag="points.redeemed"):
    data: PointsRedeemed


class PointsReturnedEvent(EventEnvelope, frozen=True, tag="points.returned"):
    data: PointsReturned


class PointsExpiringSoonEvent(EventEnvelope, frozen=True, tag="points.expiring_soon"):
    data: PointsExpiringSoon


class PointsExpiredEvent(EventEnvelope, frozen=True, tag="points.expired"):
    data: PointsExpired


class WinBackDueEvent(EventEnvelope, frozen=True, tag="customer.win_back_due"):
    data: WinBackDue


class CrossSellOpportunityEvent(EventEnvelope, frozen=True, tag="customer.cross_sell_opportunity"):
    data: CrossSellOpportunity


class TierUpgradedEvent(EventEnvelope, frozen=True, tag="tier.upgraded"):
    data: TierChanged


class TierDowngradedEvent(EventEnvelope, frozen=True, tag="tier.downgraded"):
    data: TierChanged


class TierDowngradeWarningEvent(EventEnvelope, frozen=True, tag="tier.downgrade_warning"):
    data: TierDowngradeWarning


class ReferralRedeemedEvent(EventEnvelope, frozen=True, tag="referral.redeemed"):
    data: ReferralEvent


class ReferralQualifiedEvent(EventEnvelope, frozen=True, tag="referral.qualified"):
    data: ReferralEvent


class ReferralRewardedEvent(EventEnvelope, frozen=True, tag="referral.rewarded"):
    data: ReferralEvent


class ReferralCancelledEvent(EventEnvelope, frozen=True, tag="referral.cancelled"):
    data: ReferralEvent


class ChurnRiskRedEvent(EventEnvelope, frozen=True, tag="customer.churn_risk_red"):
    data: ChurnRiskRed


AnyEvent = (
    CustomerEnrolledEvent
    | PurchaseFirstEvent
    | PurchaseRepeatEvent
    | PointsEarnedEvent
    | PointsRedeemedEvent
    | PointsReturnedEvent
    | PointsExpiringSoonEvent
    | PointsExpiredEvent
    | WinBackDueEvent
    | CrossSellOpportunityEvent
    | TierUpgradedEvent
    | TierDowngradedEvent
    | TierDowngradeWarningEvent
    | ReferralRedeemedEvent
    | ReferralQualifiedEvent
    | ReferralRewardedEvent
    | ReferralCancelledEvent
    | ChurnRiskRedEvent
)


class CatalogueEntry(msgspec.Struct, frozen=True, kw_only=True):
    event_type: EventType
    description: str
    flow: str  # the retention flow it feeds
    emitted: bool  # False: defined, emitted once its feature exists
    payload: type[msgspec.Struct]
    envelope: type[EventEnvelope]


def _entry(
    type_: EventType, payload: type[msgspec.Struct], flow: str, description: str, emitted: bool = True
) -> CatalogueEntry:
    envelope = _ENVELOPES[type_]
    data = {field.name: field.type for field in msgspec.structs.fields(envelope)}["data"]
    assert data is payload, f"{type_}: the envelope carries another payload"
    return CatalogueEntry(
        event_type=type_, payload=payload, envelope=envelope, flow=flow, description=description, emitted=emitted
    )


_ENVELOPES: dict[EventType, type[EventEnvelope]] = {
    EventType(cls.__struct_config__.tag): cls for cls in AnyEvent.__args__
}


CATALOGUE: dict[EventType, CatalogueEntry] = {
    entry.event_type: entry
    for entry in (
        _entry(EventType.CUSTOMER_ENROLLED, CustomerEnrolled, "welcome", "A customer was newly enrolled."),
        _entry(EventType.PURCHASE_FIRST, Purchase, "welcome", "A customer's first order was stored."),
        _entry(EventType.PURCHASE_REPEAT, Purchase, "repeat purchase", "A customer's second or later order."),
        _entry(
            EventType.POINTS_EARNED,
            PointsEarned,
            "loyalty",
            "Points were credited: earned by an order (pending at first), granted, or a referral reward.",
        ),
        _entry(EventType.POINTS_REDEEMED, PointsRedeemed, "loyalty", "A hold of points was captured."),
        _entry(
            EventType.POINTS_RETURNED,
            PointsReturned,
            "loyalty",
            "A refund gave back points the customer had spent on the order.",
        ),
        _entry(
            EventType.POINTS_EXPIRING_SOON,
            PointsExpiringSoon,
            "loyalty",
            "Points expire within the warning period; once per customer and date.",
        ),
        _entry(EventType.POINTS_EXPIRED, PointsExpired, "loyalty", "Unspent points expired."),
        _entry(EventType.WIN_BACK_DUE, WinBackDue, "win-back", "No purchase for the win-back period; once per lapse."),
        _entry(
            EventType.CROSS_SELL_OPPORTUNITY,
            CrossSellOpportunity,
            "cross-sell",
            "A customer bought from one category only over their first orders; once.",
        ),
        _entry(EventType.TIER_UPGRADED, TierChanged, "loyalty", "The customer moved up a tier."),
        _entry(EventType.TIER_DOWNGRADED, TierChanged, "loyalty", "The customer moved down a tier."),
        _entry(EventType.TIER_DOWNGRADE_WARNING, TierDowngradeWarning, "loyalty", "A downgrade is coming."),
        _entry(EventType.REFERRAL_REDEEMED, ReferralEvent, "referral", "A referee redeemed a code."),
        _entry(EventType.REFERRAL_QUALIFIED, ReferralEvent, "referral", "The referee's order qualified."),
        _entry(EventType.REFERRAL_REWARDED, ReferralEvent, "referral", "Both sides were rewarded."),
        _entry(
            EventType.REFERRAL_CANCELLED,
            ReferralEvent,
            "referral",
            "The qualifying order was refunded; rewards already paid were clawed back.",
        ),
        _entry(EventType.CHURN_RISK_RED, ChurnRiskRed, "win-back", "The churn-risk light turned red."),
    )
}


def payload_type(event_type: EventType) -> type[msgspec.Struct]:
    """The Struct an event type's payload must be."""
    return CATALOGUE[event_type].payload


def check_payload(event_type: EventType, payload: msgspec.Struct) -> None:
    """Refuse a payload of the wrong Struct for its type (a programming error, not input)."""
    expected = payload_type(event_type)
    if type(payload) is not expected:
        raise TypeError(f"{event_type} takes a {expected.__name__} payload, not {type(payload).__name__}")


def payload_schema(event_type: EventType) -> dict[str, Any]:
    """The JSON Schema of an event type's payload."""
    schema: dict[str, Any] = msgspec.json.schema(payload_type(event_type))
    return schema


def to_event(
    event_id: str, seq: int, event_type: str, occurred_at: datetime, customer_id: str | None, payload: bytes | str
) -> AnyEvent:
    """An event as receivers see it, from its stored parts."""
    envelope = {
        "type": event_type,
        "id": event_id,
        "seq": seq,
        "timestamp": occurred_at,
        "customer_id": customer_id,
        "data": msgspec.json.decode(payload),
    }
    event: AnyEvent = msgspec.convert(envelope, AnyEvent)
    return event
