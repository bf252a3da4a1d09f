"""The history's sentences for every entry kind, its dates by the program's zone, its cursor."""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from service.domain.errors import InvalidInput
from service.domain.history import (
    EntryFacts,
    Wording,
    decode_cursor,
    describe,
    encode_cursor,
    history_item,
    long_date,
    net_changes,
)
from service.domain.ledger import Unit

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
EUR = Wording(zone=AMSTERDAM, currency="EUR")
POSTED = datetime(2026, 3, 10, 11, 0, tzinfo=UTC)
ORDER = {"shop_id": "shp_1", "shop_name": "Test shop", "order_id": "A-1001"}


def entry(kind: str, changes: dict[str, int], metadata: dict[str, Any] | None = None, **extra: Any) -> EntryFacts:
    return EntryFacts(entry_id=7, posted_at=POSTED, kind=kind, metadata=metadata or {}, changes=changes, **extra)


@pytest.mark.parametrize(
    ("facts", "sentence"),
    [
        (
            entry(
                "order.award",
                {"pending": 250},
                ORDER | {"rules_version": 1},
                available_from=datetime(2026, 3, 24, 23, 0, tzinfo=UTC),  # 00:00 on 25 March, CET
            ),
            "Earned 250 points for order A-1001 at Test shop (available from 25 March 2026)",
        ),
        (entry("order.award", {"pending": 1}, ORDER), "Earned 1 point for order A-1001 at Test shop"),
        (entry("order.award", {"pending": 5}, {}), "Earned 5 points for an order"),
        (
            entry("order.release", {"pending": -250, "available": 250}, ORDER | {"settled": 0}),
            "250 points from order A-1001 are now available",
        ),
        (
            entry("order.release", {"pending": -1, "available": 1}, ORDER | {"settled": 0}),
            "1 point from order A-1001 is now available",
        ),
        (
            entry("order.release", {"pending": -250, "owed": 100, "available": 150}, ORDER | {"settled": 100}),
            "250 points from order A-1001 released: 100 paid off points owed, 150 now available",
        ),
        (
            entry("order.release", {"pending": -250, "owed": 250}, ORDER | {"settled": 250}),
            "250 points from order A-1001 paid off points owed",
        ),
        (
            entry("order.refund", {"available": -45}, ORDER | {"refund_id": "R-1", "forgiven": 0}),
            "45 points taken back: refund R-1 of order A-1001",
        ),
        (
            entry("order.refund", {"pending": -20, "available": -25}, ORDER | {"refund_id": "R-2", "forgiven": 0}),
            "45 points taken back: refund R-2 of order A-1001",
        ),
        (
            entry("order.refund", {"available": -50}, ORDER | {"refund_id": "R-1", "forgiven": 200}),
            "50 points taken back: refund R-1 of order A-1001 (200 already spent, forgiven)",
        ),
        (
            entry("order.refund", {"owed": -250}, ORDER | {"refund_id": "R-1", "forgiven": 0}),
            "250 points taken back: refund R-1 of order A-1001 (250 already spent, now owed)",
        ),
        (
            entry("order.redemption_return", {"available": 125}, ORDER | {"refund_id": "R-1", "hold_id": "hld_1"}),
            "125 points spent on order A-1001 given back: refund R-1",
        ),
        (
            entry(
                "order.redemption_return",
                {"owed": 18, "available": 182},
                ORDER | {"refund_id": "R-1", "hold_id": "hld_1", "settled": 18},
            ),
            "200 points spent on order A-1001 given back: refund R-1 (18 paid off points owed)",
        ),
        (
            entry(
                "order.redemption_return", {"owed": 40}, ORDER | {"refund_id": "R-2", "hold_id": "hld_1", "settled": 40}
            ),
            "40 points spent on order A-1001 given back: refund R-2 (40 paid off points owed)",
        ),
        (
            entry("hold.authorize", {"available": -200, "held": 200}, {"hold_id": "hld_1", "reference": None}),
            "200 points reserved for a redemption",
        ),
        (
            entry("hold.authorize", {"available": -200, "held": 200}, {"hold_id": "hld_1", "reference": "basket 9"}),
            "200 points reserved for a redemption (basket 9)",
        ),
        (
            entry("hold.capture", {"held": -120}, {"hold_id": "hld_1", "captured": 120}),
            "Redeemed 120 points",
        ),
        (
            entry("hold.capture", {"held": -200, "available": 80}, {"hold_id": "hld_1", "captured": 120}),
            "Redeemed 120 points, 80 points back from the reservation",
        ),
        (
            entry("hold.void", {"held": -200, "available": 200}, {"hold_id": "hld_1", "captured": 0}),
            "Reservation released: 200 points back",
        ),
        (
            entry("hold.expire", {"held": -200, "available": 200}, {"hold_id": "hld_1", "captured": 0}),
            "Reservation expired: 200 points back",
        ),
        (entry("expiry", {"available": -85}), "85 points expired"),
        (entry("adjustment.grant", {"available": 500}, {"reason": "welcome"}), "Received 500 points: welcome"),
        (entry("adjustment.deduct", {"available": -40}, {"reason": "correction"}), "40 points deducted: correction"),
        (
            entry("reversal", {"available": -500}, {"reason": "granted twice", "reversed_kind": "adjustment.grant"}),
            "Correction of an earlier entry: granted twice",
        ),
        (entry("referral.reward", {"available": 10}), "Received 10 points for a referral"),
        (
            entry("referral.reward", {"available": 500}, {"role": "referrer"}),
            "Received 500 points for referring a friend",
        ),
        (
            entry("referral.reward", {"available": 1000}, {"role": "milestone", "milestone": 10}),
            "Received 1,000 points for reaching 10 successful referrals",
        ),
        (
            entry("referral.clawback", {"credit_available": -600}, {"forgiven": 400}),
            "6.00 EUR of store credit taken back: a referral was cancelled"
            " (4.00 EUR of store credit already spent, forgiven)",
        ),
        (entry("order.gift", {"available": 10}), "Balance changed (order.gift)"),
    ],
    ids=lambda value: value.kind if isinstance(value, EntryFacts) else "",
)
def test_every_kind_in_plain_words(facts: EntryFacts, sentence: str) -> None:
    assert describe(facts, EUR) == sentence


@pytest.mark.parametrize(
    ("kind", "changes", "sentence"),
    [
        ("adjustment.grant", {"credit_available": 1250}, "Received 12.50 EUR of store credit: goodwill"),
        (
            "hold.authorize",
            {"credit_available": -5, "credit_held": 5},
            "0.05 EUR of store credit reserved for a redemption",
        ),
        (
            "hold.capture",
            {"credit_held": -300, "credit_available": 100},
            "Redeemed 2.00 EUR of store credit, 1.00 EUR of store credit back from the reservation",
        ),
        ("order.redemption_return", {"credit_available": 400}, "4.00 EUR of store credit spent on an order given back"),
    ],
)
def test_store_credit_is_money_in_the_programs_currency(kind: str, changes: dict[str, int], sentence: str) -> None:
    assert describe(entry(kind, changes, {"reason": "goodwill"}), EUR) == sentence


def test_amounts_follow_the_currencys_minor_unit() -> None:
    assert Wording(AMSTERDAM, "JPY").amount(1500, Unit.CREDIT) == "1,500 JPY of store credit"
    assert Wording(AMSTERDAM, "KWD").amount(1500, Unit.CREDIT) == "1.500 KWD of store credit"
    assert EUR.amount(1_234_567, Unit.POINTS) == "1,234,567 points"


def test_dates_are_local_dates_of_the_programs_zone() -> None:
    late = datetime(2026, 3, 31, 22, 30, tzinfo=UTC)  # already 1 April in Amsterdam (CEST)
    assert EUR.day(late) == "1 April 2026"
    assert Wording(ZoneInfo("America/New_York"), "USD").day(late) == "31 March 2026"
    award = entry("order.award", {"pending": 10}, ORDER, available_from=late)
    assert describe(award, EUR).endswith("(available from 1 April 2026)")
    assert long_date(date(2027, 1, 9)) == "9 January 2027"


def test_item_carries_the_facts_and_net_changes() -> None:
    changes = net_changes({"held": -200, "available": 200, "pending": 0})
    assert changes == {"held": -200, "available": 200}
    item = history_item(entry("hold.void", changes), EUR)
    assert (item.entry_id, item.posted_at, item.kind) == (7, POSTED, "hold.void")
    assert item.changes == {"held": -200, "available": 200}
    assert item.description == "Reservation released: 200 points back"


def test_cursor_round_trips_and_is_opaque() -> None:
    posted = datetime(2026, 3, 10, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    cursor = encode_cursor(posted, 42)
    assert "|" not in cursor and "2026" not in cursor
    assert decode_cursor(cursor) == (posted, 42)


def _opaque(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor",
        "%%%",
        encode_cursor(POSTED, 1)[:-3],
        _opaque("2026-03-10T11:00:00+00:00|"),  # no entry id
        _opaque("2026-03-10T11:00:00+00:00|7|1"),  # a statement's cursor, not a history's
        _opaque("yesterday|7"),
        encode_cursor(datetime(2026, 3, 10, 11, 0), 5),  # no offset
        encode_cursor(POSTED, 0),
        encode_cursor(POSTED, 2**63),
        "é",
    ],
)
def test_malformed_cursor_names_the_field(cursor: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        decode_cursor(cursor)
    assert refused.value.field == "cursor"
