"""The ledger under real concurrency: many tasks at once over the app's pool, each on its own
PostgreSQL session, racing for the same balances, holds and idempotency keys."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import asyncpg

from service.db.ledger import WrittenEntry, write_entry
from service.db.transaction import in_transaction
from service.domain.clock import ManualClock
from service.domain.errors import HoldNotOpen, InsufficientPoints
from service.domain.expiry import ExpiryPolicy, ExpiryRule
from service.domain.ledger import AccountKind, customer_account, system_account, transfer
from service.usecases import ledger, ledger_jobs
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import admin, balances, enrol, entry_count, sound


async def test_concurrent_holds_never_overdraw(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=1000, reason="x"), "g", clock)

    outcomes = await asyncio.gather(
        *(ledger.hold_points(who, ledger.HoldRequest(customer_id=ann, amount=30), f"h{n}", clock) for n in range(50)),
        return_exceptions=True,
    )

    kinds = Counter(type(outcome).__name__ for outcome in outcomes)
    assert kinds == {"Hold": 33, "InsufficientPoints": 17}, outcomes
    assert all(isinstance(o, ledger.Hold | InsufficientPoints) for o in outcomes)
    now = await balances(owner_connection, program.id, ann)
    assert (now["available"], now["held"]) == (10, 990)
    assert await entry_count(owner_connection, program.id) == 1 + 33
    await sound(owner_connection, program.id)


async def test_opposing_transfers_do_not_deadlock_and_conserve_points(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann, bob = await enrol(program.id, "ann", clock), await enrol(program.id, "bob", clock)
    for customer in (ann, bob):
        await ledger.adjust(
            who,
            ledger.Adjustment(customer_id=customer, amount=1000, reason="x"),
            f"g-{customer}",
            clock,
        )
    ann_available = customer_account(ann, AccountKind.AVAILABLE)
    bob_available = customer_account(bob, AccountKind.AVAILABLE)

    async def move(n: int) -> WrittenEntry:
        source, destination = (ann_available, bob_available) if n % 2 else (bob_available, ann_available)
        draft = transfer(source, destination, 1 + n % 7, kind="transfer", metadata={"n": n})

        async def work(connection: asyncpg.Connection) -> WrittenEntry:
            return await write_entry(connection, program.id, draft, actor="test", now=clock.now())

        return await in_transaction(work)

    moves = 120
    outcomes = await asyncio.gather(*(move(n) for n in range(moves)), return_exceptions=True)

    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert not failures, failures
    sent = {True: 0, False: 0}
    for n in range(moves):
        sent[n % 2 == 1] += 1 + n % 7
    after_ann = (await balances(owner_connection, program.id, ann))["available"]
    after_bob = (await balances(owner_connection, program.id, bob))["available"]
    assert after_ann == 1000 - sent[True] + sent[False]
    assert after_ann + after_bob == 2000
    assert await entry_count(owner_connection, program.id) == 2 + moves
    await sound(owner_connection, program.id)


async def test_capture_and_void_race_resolves_each_hold_once(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=1000, reason="x"), "g", clock)
    rounds = 20
    holds = [
        await ledger.hold_points(who, ledger.HoldRequest(customer_id=ann, amount=10), f"h{n}", clock)
        for n in range(rounds)
    ]

    async def race(n: int, hold: ledger.Hold) -> tuple[object, object]:
        capture, void = await asyncio.gather(
            ledger.capture_hold(who, hold.id, 7, f"c{n}", clock),
            ledger.void_hold(who, hold.id, f"v{n}", clock),
            return_exceptions=True,
        )
        return capture, void

    results = await asyncio.gather(*(race(n, hold) for n, hold in enumerate(holds)))

    captured = 0
    for hold, (capture, void) in zip(holds, results, strict=True):
        winners = [o for o in (capture, void) if isinstance(o, ledger.Hold)]
        losers = [o for o in (capture, void) if isinstance(o, HoldNotOpen)]
        assert (len(winners), len(losers)) == (1, 1), (capture, void)
        final = await ledger.get_hold(program.id, hold.id)
        assert final == winners[0]
        assert final.status == ("captured" if winners[0] is capture else "voided")
        captured += final.captured
        resolutions = await owner_connection.fetchval(
            "SELECT count(*) FROM entries WHERE program_id = $1 AND metadata->>'hold_id' = $2"
            " AND kind <> 'hold.authorize'",
            program.id,
            hold.id,
        )
        assert resolutions == 1
    now = await balances(owner_connection, program.id, ann)
    assert (now["available"], now["held"]) == (1000 - captured, 0)
    assert await entry_count(owner_connection, program.id) == 1 + 2 * rounds
    await sound(owner_connection, program.id)


async def test_same_key_at_once_makes_one_entry(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    request = ledger.Adjustment(customer_id=ann, amount=100, reason="once")

    outcomes = await asyncio.gather(
        *(ledger.adjust(who, request, "the-key", clock) for _ in range(50)), return_exceptions=True
    )

    first = outcomes[0]
    assert isinstance(first, WrittenEntry), first
    assert all(outcome == first for outcome in outcomes), outcomes
    assert (await balances(owner_connection, program.id, ann))["available"] == 100
    assert await entry_count(owner_connection, program.id) == 1
    keys = await owner_connection.fetchval("SELECT count(*) FROM idempotency_keys WHERE program_id = $1", program.id)
    assert keys == 1
    await sound(owner_connection, program.id)


async def test_same_refused_key_at_once_refuses_alike(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=50, reason="x"), "g", clock)
    request = ledger.HoldRequest(customer_id=ann, amount=60)

    outcomes = await asyncio.gather(
        *(ledger.hold_points(who, request, "the-key", clock) for _ in range(30)),
        return_exceptions=True,
    )

    assert all(isinstance(outcome, InsufficientPoints) for outcome in outcomes), outcomes
    assert len({(str(o), repr(getattr(o, "extra", None))) for o in outcomes}) == 1
    assert await entry_count(owner_connection, program.id) == 1
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=50, reason="y"), "g2", clock)
    replay = await asyncio.gather(ledger.hold_points(who, request, "the-key", clock), return_exceptions=True)
    assert isinstance(replay[0], InsufficientPoints)  # the refusal is remembered, not re-decided
    await sound(owner_connection, program.id)


async def test_jobs_race_captures_and_voids_and_each_other(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=1000, reason="x"), "g", clock)
    holds = [
        await ledger.hold_points(
            who,
            ledger.HoldRequest(customer_id=ann, amount=10, expires_in_seconds=60),
            f"h{n}",
            clock,
        )
        for n in range(20)
    ]
    clock.advance(timedelta(minutes=2))

    outcomes = await asyncio.gather(
        ledger_jobs.expire_holds(program.id, clock),
        *(ledger.capture_hold(who, h.id, None, f"c{n}", clock) for n, h in enumerate(holds[::2])),
        ledger_jobs.expire_holds(program.id, clock),
        *(ledger.void_hold(who, h.id, f"v{n}", clock) for n, h in enumerate(holds[1::2])),
        ledger_jobs.seal_chain(program.id),
        return_exceptions=True,
    )

    unexpected = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, HoldNotOpen)]
    assert not unexpected, unexpected
    statuses = Counter([(await ledger.get_hold(program.id, h.id)).status for h in holds])
    first_job, second_job = outcomes[0], outcomes[11]
    assert isinstance(first_job, int) and isinstance(second_job, int)
    assert statuses["expired"] == first_job + second_job
    assert statuses["open"] == 0 and sum(statuses.values()) == 20
    assert sum(isinstance(o, ledger.Hold) for o in outcomes) == statuses["captured"] + statuses["voided"]
    assert await entry_count(owner_connection, program.id) == 1 + 2 * 20
    now = await balances(owner_connection, program.id, ann)
    assert (now["available"], now["held"]) == (1000 - 10 * statuses["captured"], 0)
    await sound(owner_connection, program.id)


async def test_concurrent_expiry_runs_expire_each_customer_once(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    await ledger.set_expiry_rule(program.id, ExpiryRule(ExpiryPolicy.DAYS, 1))
    customers = [await enrol(program.id, f"c{n}", clock) for n in range(6)]
    for customer in customers:
        await ledger.adjust(who, ledger.Adjustment(customer_id=customer, amount=100, reason="x"), customer, clock)
    clock.advance(timedelta(days=3))

    outcomes = await asyncio.gather(
        *(ledger_jobs.expire_points(program.id, clock) for _ in range(4)),
        *(
            ledger.adjust(who, ledger.Adjustment(customer_id=c, amount=-30, reason="y"), f"d-{c}", clock)
            for c in customers[::2]
        ),
        return_exceptions=True,
    )

    runs = [run for run in outcomes[:4] if isinstance(run, int)]
    deductions = outcomes[4:]
    assert len(runs) == 4, outcomes[:4]
    assert all(isinstance(o, WrittenEntry | InsufficientPoints) for o in deductions), deductions
    assert sum(runs) == len(customers)  # each run re-checks under the customer's lock
    spent = sum(30 for o in deductions if isinstance(o, WrittenEntry))
    expired = await owner_connection.fetchval(
        "SELECT coalesce(sum(p.amount), 0) FROM postings p JOIN accounts a"
        " ON a.program_id = p.program_id AND a.id = p.account_id"
        " WHERE p.program_id = $1 AND a.kind = 'expired'",
        program.id,
    )
    assert expired == 100 * len(customers) - spent
    for customer in customers:
        assert (await balances(owner_connection, program.id, customer))["available"] == 0
    await sound(owner_connection, program.id)


async def test_first_write_of_a_program_survives_a_deadlock_retry(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    ann = await enrol(program.id, "ann", clock)
    draft = transfer(
        system_account(AccountKind.ISSUED),
        customer_account(ann, AccountKind.AVAILABLE),
        5,
        kind="x",
    )
    attempts = 0

    async def work(connection: asyncpg.Connection) -> WrittenEntry:
        nonlocal attempts
        attempts += 1
        entry = await write_entry(connection, program.id, draft, actor="test", now=clock.now())
        if attempts == 1:  # as if PostgreSQL chose this transaction as a deadlock victim
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        return entry

    await in_transaction(work)
    assert attempts == 2
    assert (await balances(owner_connection, program.id, ann))["available"] == 5
    await sound(owner_connection, program.id)


async def test_racing_reversals_of_one_entry_reverse_it_once(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    grant = await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=100, reason="x"), "g", clock)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=50, reason="x"), "g2", clock)
    deduct = await ledger.adjust(
        who, ledger.Adjustment(customer_id=ann, amount=-40, reason="y"), "d", clock
    )  # 110 left: enough to reverse the grant once, not twice

    outcomes = await asyncio.gather(
        *(ledger.reverse(who, grant.id, "mistake", f"rg{n}", clock) for n in range(10)),
        *(ledger.reverse(who, deduct.id, "mistake", f"rd{n}", clock) for n in range(10)),
        return_exceptions=True,
    )

    for reversals in (outcomes[:10], outcomes[10:]):
        kinds = Counter(type(outcome).__name__ for outcome in reversals)
        # the losers are told the entry is already reversed, whatever the balance says
        assert kinds == {"WrittenEntry": 1, "AlreadyReversed": 9}, reversals
    assert (await balances(owner_connection, program.id, ann))["available"] == 110 - 100 + 40
    assert await entry_count(owner_connection, program.id) == 3 + 2
    await sound(owner_connection, program.id)
