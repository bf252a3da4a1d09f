"""Lifecycle events on the real database: emitted by the flows in their own transactions,
never for what was rolled back or refused, published into a gap-free feed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest

from service.db.events import emit, emit_once
from service.db.ledger import EntryToWrite, WrittenEntry, write_entries
from service.db.transaction import transaction
from service.domain.clock import ManualClock
from service.domain.earning import Order, OrderLine
from service.domain.errors import InsufficientPoints, NotFound
from service.domain.events import AnyEvent, EventType, PointsEarned, PointsEarnedEvent, PointsExpired
from service.domain.expiry import ExpiryPolicy, ExpiryRule
from service.domain.ledger import Unit
from service.usecases import ledger, ledger_jobs, lifecycle, orders
from service.usecases.dispatch import publish_events
from service.usecases.ledger_settings import ProgramLedgerSettings, ledger_settings
from service.usecases.webhooks import event_feed
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import admin, checkout, enrol
from tests.integration.test_order_life import setup_program

START = datetime(2026, 3, 10, 11, 0, tzinfo=UTC)
RULES = lifecycle.LifecycleRules(expiring_soon_days=7, win_back_days=60, cross_sell_orders=3)


def basket(*categories: str, placed_at: datetime = START) -> Order:
    lines = tuple(OrderLine(sku=f"sku-{c}", category=c, unit_price=1000, quantity=1) for c in categories)
    return Order(currency="EUR", placed_at=placed_at, lines=lines)


async def place(program: ProgramFixture, customer: str, order_id: str, order: Order, clock: ManualClock) -> Any:
    placement = orders.OrderPlacement(order_id=order_id, customer_id=customer, order=order)
    return await orders.place_order(checkout(program.id), program.shop_id, placement, clock)


async def published(program_id: str, clock: ManualClock) -> list[AnyEvent]:
    """Publish the outbox and read the whole feed."""
    await publish_events(program_id, clock)
    events, _ = await event_feed(program_id, None, 500, None)
    return events


def kinds(events: list[AnyEvent]) -> list[str]:
    return [msgspec.to_builtins(event)["type"] for event in events]


async def test_enrolment_and_orders_emit_welcome_purchase_and_points(
    program: ProgramFixture, clock: ManualClock
) -> None:
    await setup_program(program, clock)
    ann = await enrol(program.id, "ann", clock)
    await enrol(program.id, "ann", clock)  # the same enrolment again: not newly enrolled
    first = await place(program, ann, "A-1", basket("coffee", "tea"), clock)
    assert await place(program, ann, "A-1", basket("coffee", "tea"), clock) == first  # replayed: no new events
    await place(program, ann, "A-2", basket("coffee"), clock)

    events = await published(program.id, clock)
    assert kinds(events) == [
        "customer.enrolled",
        "purchase.first",
        "points.earned",
        "purchase.repeat",
        "points.earned",
    ]
    assert [event.seq for event in events] == [1, 2, 3, 4, 5]
    assert all(event.customer_id == ann for event in events)
    body = [msgspec.to_builtins(event)["data"] for event in events]
    assert body[0]["external_id"] == "ann"
    assert body[1] | {"placed_at": None} == {
        "customer_id": ann,
        "shop_id": program.shop_id,
        "order_id": "A-1",
        "order_number": 1,
        "placed_at": None,
        "currency": "EUR",
        "net": 2000,
        "points": 200,
        "categories": ["coffee", "tea"],
    }
    assert body[2] == {  # an order's points.earned, as it always was
        "customer_id": ann,
        "points": 200,
        "source": "order",
        "shop_id": program.shop_id,
        "order_id": "A-1",
        "entry_id": first.award_entry_id,
        "available_from": first.available_from.isoformat().replace("+00:00", "Z"),
        "expires_at": None,
    }
    assert body[3]["order_number"] == 2
    assert len({event.id for event in events}) == 5


async def test_capture_emits_redeemed_and_expiry_emits_expired(program: ProgramFixture, clock: ManualClock) -> None:
    clock.set(START)
    await ledger.set_expiry_rule(program.id, ExpiryRule(ExpiryPolicy.DAYS, 10))
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(admin(program.id), ledger.Adjustment(customer_id=ann, amount=500, reason="gift"), "g-1", clock)
    request = ledger.HoldRequest(customer_id=ann, amount=300, reference="basket-9")
    hold = await ledger.hold_points(checkout(program.id), request, "h-1", clock)
    captured = await ledger.capture_hold(checkout(program.id), hold.id, 120, "c-1", clock)
    voided_hold = await ledger.hold_points(
        checkout(program.id), ledger.HoldRequest(customer_id=ann, amount=10), "h-2", clock
    )
    await ledger.void_hold(checkout(program.id), voided_hold.id, "v-1", clock)  # nothing redeemed: no event
    zero = await ledger.hold_points(checkout(program.id), ledger.HoldRequest(customer_id=ann, amount=10), "h-3", clock)
    await ledger.capture_hold(checkout(program.id), zero.id, 0, "c-3", clock)  # a capture of 0: no event
    with pytest.raises(InsufficientPoints):  # refused: its savepoint rolls back, nothing emitted
        await ledger.hold_points(checkout(program.id), ledger.HoldRequest(customer_id=ann, amount=10_000), "h-4", clock)

    events = await published(program.id, clock)
    assert kinds(events) == ["customer.enrolled", "points.earned", "points.redeemed"]  # the grant, the capture
    redeemed = msgspec.to_builtins(events[2])["data"]
    assert redeemed == {
        "customer_id": ann,
        "points": 120,
        "hold_id": hold.id,
        "entry_id": captured.resolve_entry_id,
        "reference": "basket-9",
    }

    # 380 left; a warning 7 days ahead of the date, once; then the expiry itself
    clock.set(START + timedelta(days=4))
    assert await lifecycle.points_expiring_soon(program.id, clock, RULES) == 1
    assert await lifecycle.points_expiring_soon(program.id, clock, RULES) == 0
    clock.set(START + timedelta(days=12))
    assert await ledger_jobs.expire_points(program.id, clock) == 1
    events = await published(program.id, clock)
    assert kinds(events)[3:] == ["points.expiring_soon", "points.expired"]
    soon, expired = (msgspec.to_builtins(event)["data"] for event in events[3:])
    assert soon["points"] == 380 and soon["last_day"] == "2026-03-20"
    assert expired["points"] == 380 and expired["customer_id"] == ann


async def lot_expiry(connection: asyncpg.Connection, program_id: str, entry_id: int) -> datetime | None:
    expiry: datetime | None = await connection.fetchval(
        "SELECT expires_at FROM lots WHERE program_id = $1 AND entry_id = $2", program_id, entry_id
    )
    return expiry


def earned(events: list[AnyEvent]) -> list[PointsEarned]:
    return [event.data for event in events if isinstance(event, PointsEarnedEvent)]


async def test_a_grant_of_points_emits_points_earned_once_and_a_deduction_nothing(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    clock.set(START)
    await ledger.set_expiry_rule(program.id, ExpiryRule(ExpiryPolicy.DAYS, 10))
    ann = await enrol(program.id, "ann", clock)
    gift = ledger.Adjustment(customer_id=ann, amount=500, reason="goodwill")
    entry = await ledger.adjust(admin(program.id), gift, "g-1", clock)
    clock.advance(timedelta(seconds=1))
    assert await ledger.adjust(admin(program.id), gift, "g-1", clock) == entry  # replayed: no second event
    deduct = ledger.Adjustment(customer_id=ann, amount=-200, reason="correction")
    await ledger.adjust(admin(program.id), deduct, "d-1", clock)  # a debit: no event
    credit = ledger.Adjustment(customer_id=ann, amount=300, unit=Unit.CREDIT, reason="store credit")
    await ledger.adjust(admin(program.id), credit, "c-1", clock)  # store credit, not points: no event
    with pytest.raises(NotFound):  # refused (and remembered): no event
        await ledger.adjust(admin(program.id), msgspec.structs.replace(gift, customer_id="cus_nobody"), "g-2", clock)

    events = await published(program.id, clock)
    assert kinds(events) == ["customer.enrolled", "points.earned"]
    assert events[1].customer_id == ann and events[1].timestamp == entry.posted_at
    assert earned(events) == [
        PointsEarned(
            customer_id=ann,
            points=500,
            source="grant",
            shop_id=None,
            order_id=None,
            entry_id=entry.id,
            available_from=entry.posted_at,
            expires_at=await lot_expiry(owner_connection, program.id, entry.id),
        )
    ]
    assert msgspec.to_builtins(events[1])["data"]["shop_id"] is None  # present, null: not from an order


async def test_grants_committed_together_emit_one_event_each(program: ProgramFixture, clock: ManualClock) -> None:
    clock.set(START)
    customers = [await enrol(program.id, f"c{number}", clock) for number in range(4)]
    for customer in customers:  # a start, so that the deductions below have points
        start = ledger.Adjustment(customer_id=customer, amount=1000, reason="start")
        await ledger.adjust(admin(program.id), start, customer, clock)

    async def adjust(number: int, customer: str, amount: int) -> tuple[str, int, WrittenEntry]:
        adjustment = ledger.Adjustment(customer_id=customer, amount=amount, reason="batch")
        return customer, amount, await ledger.adjust(admin(program.id), adjustment, f"b-{number}", clock)

    # grants (several per statement), deductions (group commit) and replays of one key, all at once
    work = [adjust(number, customers[number % 4], 10 + number if number % 3 else -5) for number in range(60)]
    work += [adjust(1, customers[1], 11) for _ in range(5)]
    done = await asyncio.gather(*work)
    written = {entry.id: (customer, amount) for customer, amount, entry in done if amount > 0}
    assert len(written) == 40

    events = earned(await published(program.id, clock))
    assert len(events) == 4 + 40
    batch = {event.entry_id: (event.customer_id, event.points) for event in events[4:]}
    assert batch == written
    assert all(event.source == "grant" for event in events)


async def test_grants_written_with_other_entries_emit_in_their_statement(
    program: ProgramFixture, clock: ManualClock
) -> None:
    """Both ways of writing a batch (credit-only entries in one call, or mixed with debits),
    with refused entries among them: an event for each grant written, and only for those."""
    clock.set(START)
    ann = await enrol(program.id, "ann", clock)
    bob = await enrol(program.id, "bob", clock)
    await ledger.adjust(admin(program.id), ledger.Adjustment(customer_id=ann, amount=100, reason="x"), "seed", clock)

    def item(customer: str, amount: int, settings: ProgramLedgerSettings) -> EntryToWrite:
        adjustment = ledger.Adjustment(customer_id=customer, amount=amount, reason="direct")
        return EntryToWrite(ledger.adjustment_draft(adjustment, settings, clock.now()), "test")

    async with transaction() as connection:
        settings = await ledger_settings(connection, program.id)
        credits = [item("cus_nobody", 5, settings), item(bob, 7, settings), item(ann, 8, settings)]
        first = await write_entries(connection, program.id, credits, now=clock.now())
        mixed = [item(ann, -10_000, settings), item(bob, 9, settings), item(ann, -50, settings), item(ann, 6, settings)]
        second = await write_entries(connection, program.id, mixed, now=clock.now())
    assert [type(outcome).__name__ for outcome in first + second] == [
        "NotFound",
        "WrittenEntry",
        "WrittenEntry",
        "InsufficientPoints",
        "WrittenEntry",
        "WrittenEntry",
        "WrittenEntry",
    ]
    grants = [o for o in first + second if isinstance(o, WrittenEntry) and o.kind == "adjustment.grant"]
    events = earned(await published(program.id, clock))[1:]  # after the seed's
    credited = [grant.postings[-1] for grant in grants]  # customer:<id>:available
    assert [(e.entry_id, e.customer_id, e.points) for e in events] == [
        (grant.id, posting.account.split(":")[1], posting.amount)
        for grant, posting in zip(grants, credited, strict=True)
    ]
    assert [e.available_from for e in events] == [g.posted_at for g in grants]


async def test_win_back_once_per_lapse_and_cross_sell_once(program: ProgramFixture, clock: ManualClock) -> None:
    await setup_program(program, clock)
    ann = await enrol(program.id, "ann", clock)
    bob = await enrol(program.id, "bob", clock)
    for number in range(3):
        await place(program, ann, f"A-{number}", basket("coffee"), clock)
        await place(program, bob, f"B-{number}", basket("coffee", "mugs" if number == 2 else "coffee"), clock)
    assert await lifecycle.cross_sell_opportunities(program.id, clock, RULES) == 1  # ann only: bob bought mugs
    assert await lifecycle.cross_sell_opportunities(program.id, clock, RULES) == 0
    assert await lifecycle.win_back_due(program.id, clock, RULES) == 0

    clock.set(START + timedelta(days=61))
    assert await lifecycle.win_back_due(program.id, clock, RULES) == 2
    assert await lifecycle.win_back_due(program.id, clock, RULES) == 0  # once per lapse
    await place(program, ann, "A-9", basket("tea", placed_at=clock.now()), clock)
    clock.advance(timedelta(days=61))
    assert await lifecycle.win_back_due(program.id, clock, RULES) == 1  # ann lapsed again; bob's lapse is old

    events = await published(program.id, clock)
    cross = [msgspec.to_builtins(e)["data"] for e in events if kinds([e]) == ["customer.cross_sell_opportunity"]]
    assert cross == [{"customer_id": ann, "category": "coffee", "orders": 3}]
    win_back = [msgspec.to_builtins(e)["data"] for e in events if kinds([e]) == ["customer.win_back_due"]]
    assert sorted((w["customer_id"], w["orders"]) for w in win_back) == sorted([(ann, 3), (bob, 3), (ann, 4)])


async def test_a_rolled_back_transaction_emits_nothing(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    ann = await enrol(program.id, "ann", clock)
    with pytest.raises(RuntimeError):
        async with transaction() as connection:
            payload = PointsExpired(customer_id=ann, points=1, entry_id=1)
            await emit(connection, program.id, EventType.POINTS_EXPIRED, payload, ann, occurred_at=clock.now())
            raise RuntimeError("the change failed after its event was written")
    await setup_program(program, clock)
    with pytest.raises(NotFound):  # a refused order: its savepoint takes the events with it
        await place(program, "cus_nobody", "X-1", basket("coffee"), clock)

    events = await published(program.id, clock)
    assert kinds(events) == ["customer.enrolled"]
    outbox = await owner_connection.fetchval("SELECT count(*) FROM event_outbox WHERE program_id = $1", program.id)
    assert outbox == 0


async def test_emit_refuses_a_payload_of_another_type(program: ProgramFixture, clock: ManualClock) -> None:
    async with transaction() as connection:
        with pytest.raises(TypeError, match="PointsExpired"):
            payload = PointsExpired(customer_id="c", points=1, entry_id=1)
            await emit(connection, program.id, EventType.POINTS_REDEEMED, payload, occurred_at=clock.now())


async def test_the_feed_pages_with_its_cursor_and_filters_by_type(program: ProgramFixture, clock: ManualClock) -> None:
    customers = [await enrol(program.id, f"c{number}", clock) for number in range(5)]
    async with transaction() as connection:
        for customer in customers[:2]:
            payload = PointsExpired(customer_id=customer, points=5, entry_id=1)
            await emit(connection, program.id, EventType.POINTS_EXPIRED, payload, customer, occurred_at=clock.now())
    assert await publish_events(program.id, clock) == 7

    seen: list[int] = []
    cursor: str | None = None
    for _ in range(4):
        page, cursor = await event_feed(program.id, cursor, 3, None)
        seen += [event.seq for event in page]
    assert seen == [1, 2, 3, 4, 5, 6, 7]
    assert cursor == "7"
    assert await event_feed(program.id, cursor, 3, None) == ([], "7")  # nothing new: the same cursor

    expired, cursor = await event_feed(program.id, None, 10, [EventType.POINTS_EXPIRED])
    assert [event.seq for event in expired] == [6, 7] and cursor == "7"
    none, cursor = await event_feed(program.id, None, 10, [EventType.WIN_BACK_DUE])
    assert none == [] and cursor == "7"  # the filter skipped everything up to 7


async def test_publication_numbers_in_visibility_order_without_gaps(
    program: ProgramFixture, clock: ManualClock, database: str
) -> None:
    """An event drawn before others but committed after they were published still gets the
    next seq, so a reader that has passed seq N never misses an event that shows up later."""
    slow = await asyncpg.connect(database)  # a transaction of its own, outside the app's pool
    try:
        async with slow.transaction():
            payload = PointsExpired(customer_id="cus_slow", points=1, entry_id=1)
            await emit(slow, program.id, EventType.POINTS_EXPIRED, payload, occurred_at=clock.now())
            await enrol(program.id, "ann", clock)  # drawn after the slow one, committed before it
            assert await publish_events(program.id, clock) == 1  # the slow one is not visible yet
            _, cursor = await event_feed(program.id, None, 10, None)
            assert cursor == "1"
    finally:
        await slow.close()
    assert await publish_events(program.id, clock) == 1
    late, _ = await event_feed(program.id, cursor, 10, None)
    assert [(event.seq, kinds([event])[0]) for event in late] == [(2, "points.expired")]


async def test_an_event_emitted_once_is_the_event_its_mark_names(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    ann = await enrol(program.id, "ann", clock)
    expired = PointsExpired(customer_id=ann, points=5, entry_id=1)
    async with transaction() as connection:
        assert await emit_once(connection, program.id, "k", EventType.POINTS_EXPIRED, expired, ann, occurred_at=START)
        again = await emit_once(connection, program.id, "k", EventType.POINTS_EXPIRED, expired, ann, occurred_at=START)
    assert again is False
    marked = await owner_connection.fetchval(
        "SELECT event_id FROM event_marks WHERE program_id = $1 AND key = 'k'", program.id
    )
    emitted = await owner_connection.fetch(
        "SELECT id FROM event_outbox WHERE program_id = $1 AND type = 'points.expired' UNION ALL"
        " SELECT id FROM events WHERE program_id = $1 AND type = 'points.expired'",
        program.id,
    )
    assert [row["id"] for row in emitted] == [marked]
