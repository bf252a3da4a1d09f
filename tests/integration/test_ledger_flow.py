"""The ledger's operations against PostgreSQL, with exact postings checked."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from service.db.ledger import write_entry
from service.db.transaction import in_transaction
from service.domain.clock import ManualClock
from service.domain.errors import (
    AlreadyReversed,
    HoldNotOpen,
    IdempotencyKeyReused,
    InsufficientPoints,
)
from service.domain.expiry import ExpiryPolicy, ExpiryRule
from service.domain.ledger import AccountKind, customer_account, system_account, transfer
from service.usecases import ledger, ledger_jobs, lifecycle
from service.usecases.finance import ExpiringPoints, customer_balance, verify_chain
from tests.conftest import ProgramFixture, make_program
from tests.integration.ledger_helpers import admin, balances, enrol, ledger_invariants


async def test_grant_hold_capture_void_reverse(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    grant = await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=500, reason="welcome"), "g1", clock)
    assert [(p.account, p.amount, p.balance_after) for p in grant.postings] == [
        ("system:issued", -500, None),
        (f"customer:{ann}:available", 500, 500),
    ]
    replay = await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=500, reason="welcome"), "g1", clock)
    assert replay == grant
    with pytest.raises(IdempotencyKeyReused):
        await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=501, reason="welcome"), "g1", clock)

    hold = await ledger.hold_points(who, ledger.HoldRequest(customer_id=ann, amount=300), "h1", clock)
    assert await balances(owner_connection, program.id, ann) == {
        "available": 200,
        "pending": 0,
        "held": 300,
        "credit_available": 0,
        "credit_held": 0,
        "owed": 0,
    }
    captured = await ledger.capture_hold(who, hold.id, 120, "c1", clock)
    assert (captured.status, captured.captured) == ("captured", 120)
    with pytest.raises(HoldNotOpen):
        await ledger.void_hold(who, hold.id, "v1", clock)
    with pytest.raises(HoldNotOpen):  # the refusal is remembered under its key
        await ledger.void_hold(who, hold.id, "v1", clock)
    assert (await balances(owner_connection, program.id, ann))["available"] == 380

    with pytest.raises(InsufficientPoints) as refused:
        await ledger.hold_points(who, ledger.HoldRequest(customer_id=ann, amount=381), "h2", clock)
    assert refused.value.extra["available"] == 380

    with pytest.raises(InsufficientPoints):  # 120 of the 500 were spent: no overdraft
        await ledger.reverse(who, grant.id, "granted by mistake", "r0", clock)
    bonus = await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=70, reason="bonus"), "g2", clock)
    reversal = await ledger.reverse(who, bonus.id, "granted by mistake", "r1", clock)
    assert reversal.reverses_entry_id == bonus.id
    assert [(p.account, p.amount) for p in reversal.postings] == [
        ("system:issued", 70),
        (f"customer:{ann}:available", -70),
    ]
    assert (await balances(owner_connection, program.id, ann))["available"] == 380
    with pytest.raises(AlreadyReversed):
        await ledger.reverse(who, bonus.id, "again", "r2", clock)

    await ledger_invariants(owner_connection, program.id)
    assert await ledger_jobs.seal_chain(program.id) == 5
    report = await verify_chain(program.id)
    assert report.valid and report.sealed == 5 and report.unsealed == 0


async def test_expiry_and_hold_expiry(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    await ledger.set_expiry_rule(program.id, ExpiryRule(ExpiryPolicy.DAYS, 30))
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=100, reason="a"), "g1", clock)
    clock.advance(timedelta(days=10))
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=50, reason="b"), "g2", clock)
    hold = await ledger.hold_points(
        who, ledger.HoldRequest(customer_id=ann, amount=120, expires_in_seconds=60), "h1", clock
    )
    clock.advance(timedelta(minutes=5))
    assert await ledger_jobs.expire_holds(program.id, clock) == 1
    assert await ledger_jobs.expire_holds(program.id, clock) == 0
    assert (await ledger.get_hold(program.id, hold.id)).status == "expired"
    clock.advance(timedelta(days=22))  # the first lot (100) is past its date, the second is not
    assert await ledger_jobs.expire_points(program.id, clock) == 1
    assert await ledger_jobs.expire_points(program.id, clock) == 0
    assert (await balances(owner_connection, program.id, ann))["available"] == 50
    await ledger_invariants(owner_connection, program.id)


async def test_reversing_a_grant_takes_back_its_own_lot(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """Undoing a mistaken grant must not swap the customer's older, sooner-expiring points
    for the grant's later-expiring ones (which would extend their life)."""
    who = admin(program.id)
    await ledger.set_expiry_rule(program.id, ExpiryRule(ExpiryPolicy.DAYS, 30))
    ann = await enrol(program.id, "ann", clock)

    def change(amount: int) -> ledger.Adjustment:
        return ledger.Adjustment(customer_id=ann, amount=amount, reason="test")

    old = await ledger.adjust(who, change(100), "g1", clock)
    clock.advance(timedelta(days=20))
    mistake = await ledger.adjust(who, change(60), "g2", clock)
    await ledger.adjust(who, change(-30), "d1", clock)  # spends the old points, soonest first
    await ledger.reverse(who, mistake.id, "granted by mistake", "r1", clock)
    lots = await owner_connection.fetch(
        "SELECT entry_id, remaining FROM lots WHERE program_id = $1 AND remaining > 0", program.id
    )
    assert [(row["entry_id"], row["remaining"]) for row in lots] == [(old.id, 70)]
    clock.advance(timedelta(days=11))  # past the old points' date
    assert await ledger_jobs.expire_points(program.id, clock) == 1
    assert (await balances(owner_connection, program.id, ann))["available"] == 0
    await ledger_invariants(owner_connection, program.id)


async def test_an_expired_hold_cannot_be_captured_even_before_the_job_runs(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=100, reason="a"), "g1", clock)
    hold = await ledger.hold_points(
        who, ledger.HoldRequest(customer_id=ann, amount=60, expires_in_seconds=60), "h1", clock
    )
    clock.advance(timedelta(seconds=61))
    with pytest.raises(HoldNotOpen, match="expired"):
        await ledger.capture_hold(who, hold.id, None, "c1", clock)
    assert await ledger_jobs.expire_holds(program.id, clock) == 1
    assert (await balances(owner_connection, program.id, ann))["available"] == 100
    await ledger_invariants(owner_connection, program.id)


async def test_a_resolved_hold_gives_back_its_own_points_with_their_dates(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """Two open holds share the customer's `held` account: voiding one must return the points
    it reserved, with their dates, not the other hold's sooner-expiring ones."""
    who = admin(program.id)
    await ledger.set_expiry_rule(program.id, ExpiryRule(ExpiryPolicy.DAYS, 30))
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=100, reason="old"), "g1", clock)
    clock.advance(timedelta(days=20))
    young = await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=100, reason="new"), "g2", clock)
    first = await ledger.hold_points(who, ledger.HoldRequest(customer_id=ann, amount=100), "h1", clock)  # old
    second = await ledger.hold_points(who, ledger.HoldRequest(customer_id=ann, amount=100), "h2", clock)  # new
    await ledger.void_hold(who, second.id, "v2", clock)
    await ledger.capture_hold(who, first.id, None, "c1", clock)
    lots = await owner_connection.fetch(
        "SELECT l.remaining, l.expires_at FROM lots l JOIN accounts a ON a.program_id = l.program_id"
        " AND a.id = l.account_id WHERE l.program_id = $1 AND l.remaining > 0 AND a.kind = 'available'",
        program.id,
    )
    young_expiry = await owner_connection.fetchval(
        "SELECT expires_at FROM lots WHERE program_id = $1 AND entry_id = $2", program.id, young.id
    )
    assert [(row["remaining"], row["expires_at"]) for row in lots] == [(100, young_expiry)]
    clock.advance(timedelta(days=11))  # past the old points' date, not the new ones'
    assert await ledger_jobs.expire_points(program.id, clock) == 0
    assert (await balances(owner_connection, program.id, ann))["available"] == 100
    await ledger_invariants(owner_connection, program.id)


async def test_the_last_valid_day_where_the_clocks_skip_midnight(
    database: str, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """In Santiago the clocks go from 00:00 to 01:00 on 8 September 2024: points valid
    through the 7th expire at 01:00 local (04:00 UTC), and their last day is still the 7th,
    in the balance and in the warning."""
    program = await make_program(time_zone="America/Santiago")
    who = admin(program.id)
    await ledger.set_expiry_rule(program.id, ExpiryRule(ExpiryPolicy.DAYS, 0))
    clock.set(datetime(2024, 9, 7, 12, tzinfo=UTC))  # 08:00 on the 7th, local
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=100, reason="a"), "g1", clock)
    balance = await customer_balance(program.id, ann, clock.now())
    assert balance.expiring == [ExpiringPoints(date(2024, 9, 7), 100)]
    assert await lifecycle.points_expiring_soon(program.id, clock, lifecycle.LifecycleRules()) == 1
    warned = await owner_connection.fetchval(
        "SELECT payload ->> 'last_day' FROM event_outbox WHERE program_id = $1 AND type = 'points.expiring_soon'",
        program.id,
    )
    assert warned == "2024-09-07"
    clock.set(datetime(2024, 9, 8, 4, tzinfo=UTC))  # 01:00 on the 8th: the first instant of that day
    assert await ledger_jobs.expire_points(program.id, clock) == 1


async def test_the_balance_lists_the_points_expiring_in_the_next_30_local_days(
    program: ProgramFixture, clock: ManualClock
) -> None:
    """The balance's `expiring` list covers 30 local days, today the first, not 30 x 24 hours:
    across the spring change those reach an hour into the 31st day."""
    amsterdam = ZoneInfo("Europe/Amsterdam")
    await ledger.set_expiry_rule(program.id, ExpiryRule(ExpiryPolicy.DAYS, 34))
    clock.set(datetime(2026, 3, 20, 12, tzinfo=amsterdam))  # valid through 23 April
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(admin(program.id), ledger.Adjustment(customer_id=ann, amount=30, reason="a"), "g1", clock)

    # instants in UTC, as the clock gives them
    late_on_the_24th = datetime(2026, 3, 24, 23, 30, tzinfo=amsterdam).astimezone(UTC)  # + 30 x 24 h: 24 April 00:30
    assert (await customer_balance(program.id, ann, late_on_the_24th)).expiring == []
    the_25th = datetime(2026, 3, 25, tzinfo=amsterdam).astimezone(UTC)  # 25 March to 23 April: 30 local days
    assert (await customer_balance(program.id, ann, the_25th)).expiring == [ExpiringPoints(date(2026, 4, 23), 30)]


async def test_the_balance_window_ends_at_the_first_of_two_local_midnights(database: str, clock: ManualClock) -> None:
    """In Havana the clocks go back from 01:00 to 00:00 on 1 November 2026: that day starts
    at 04:00 UTC and its midnight comes again at 05:00 UTC. Seen on 2 October, the 30 local
    days end with 31 October, so points valid into the first hour of 1 November (a lot dated
    by another zone database, or written with its own expiry) are not listed: their last
    valid day, as the list names it, is the 31st day."""
    program = await make_program(time_zone="America/Havana")
    clock.set(datetime(2026, 10, 2, 16, tzinfo=UTC))  # noon on 2 October, local
    ann = await enrol(program.id, "ann", clock)
    between = datetime(2026, 11, 1, 4, 30, tzinfo=UTC)  # 00:30 on 1 November, the first time
    draft = transfer(
        system_account(AccountKind.ADJUSTMENTS),
        customer_account(ann, AccountKind.AVAILABLE),
        10,
        kind="adjustment.grant",
        metadata={"reason": "a"},
        lot_expires_at=between,
    )

    async def grant(connection: asyncpg.Connection) -> None:
        await write_entry(connection, program.id, draft, actor="key:key_test", now=clock.now())

    await in_transaction(grant)
    assert (await customer_balance(program.id, ann, clock.now())).expiring == []
    # a day later the window takes in 1 November, and the lot is listed on that day
    clock.set(datetime(2026, 10, 3, 16, tzinfo=UTC))
    assert (await customer_balance(program.id, ann, clock.now())).expiring == [ExpiringPoints(date(2026, 11, 1), 10)]
