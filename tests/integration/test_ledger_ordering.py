"""Regressions: entry order follows lock order, a bad request fails alone, shutdown answers everyone."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from service.db.ledger import EntryToWrite, WrittenEntry, write_entries, write_entry
from service.db.transaction import in_transaction
from service.domain.clock import ManualClock
from service.domain.ledger import AccountKind, customer_account, system_account, transfer
from service.usecases import ledger
from service.usecases.finance import account_balance
from service.usecases.group_commit import close_batchers
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import admin, balances, enrol, ledger_invariants


async def test_a_write_that_waited_for_a_lock_gets_the_later_entry_id(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection, database: str
) -> None:
    ann = await enrol(program.id, "ann", clock)
    bob = await enrol(program.id, "bob", clock)
    issued = system_account(AccountKind.ISSUED)
    ann_available = customer_account(ann, AccountKind.AVAILABLE)
    bob_available = customer_account(bob, AccountKind.AVAILABLE)
    blocker = await asyncpg.connect(database)
    await blocker.execute("BEGIN")
    await blocker.execute(
        "SELECT 1 FROM accounts WHERE program_id = $1 AND code = $2 FOR NO KEY UPDATE", program.id, ann_available.code
    )
    now = clock.now()
    items = [
        EntryToWrite(transfer(issued, ann_available, 10, kind="g"), "t"),
        EntryToWrite(transfer(issued, bob_available, 10, kind="g"), "t"),
    ]
    waiting = asyncio.create_task(in_transaction(lambda c: write_entries(c, program.id, items, now=now)))
    await asyncio.sleep(0.3)  # the batch now waits for ann's row
    first = await in_transaction(
        lambda c: write_entry(c, program.id, transfer(issued, bob_available, 5, kind="g"), actor="t", now=now)
    )
    await blocker.execute("COMMIT")
    await blocker.close()
    later = [result for result in await waiting if isinstance(result, WrittenEntry)]
    assert all(entry.id > first.id for entry in later)
    account_id = await owner_connection.fetchval(
        "SELECT id FROM accounts WHERE program_id = $1 AND code = $2", program.id, bob_available.code
    )
    as_of = await account_balance(program.id, account_id, later[-1].posted_at)
    assert as_of.balance == 15 == (await account_balance(program.id, account_id, None)).balance


async def test_a_request_that_breaks_its_batch_fails_alone(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    ann = await enrol(program.id, "ann", clock)
    who = admin(program.id)
    good = [
        ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=10, reason="ok"), f"k{n}", clock) for n in range(5)
    ]
    # a NUL gets past this in-process call (HTTP refuses it earlier) and breaks the batch's statement
    bad = ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=10, reason="bad\x00"), "k-bad", clock)
    outcomes = await asyncio.gather(*good, bad, return_exceptions=True)
    assert all(isinstance(outcome, WrittenEntry) for outcome in outcomes[:5]), outcomes
    assert isinstance(outcomes[5], asyncpg.PostgresError)
    assert (await balances(owner_connection, program.id, ann))["available"] == 50
    await ledger_invariants(owner_connection, program.id)


async def test_shutdown_answers_a_request_in_flight(program: ProgramFixture, clock: ManualClock, database: str) -> None:
    ann = await enrol(program.id, "ann", clock)
    blocker = await asyncpg.connect(database)
    await blocker.execute("BEGIN")
    await blocker.execute(
        "SELECT 1 FROM accounts WHERE program_id = $1 AND customer_id = $2 FOR NO KEY UPDATE", program.id, ann
    )
    pending = asyncio.create_task(
        ledger.adjust(admin(program.id), ledger.Adjustment(customer_id=ann, amount=1, reason="x"), "k", clock)
    )
    await asyncio.sleep(0.3)
    await close_batchers()
    with pytest.raises(RuntimeError, match="shutting down"):
        await asyncio.wait_for(pending, timeout=5)
    await blocker.execute("ROLLBACK")
    await blocker.close()


async def test_shutdown_answers_a_deduction_in_flight(
    program: ProgramFixture, clock: ManualClock, database: str
) -> None:
    ann = await enrol(program.id, "ann", clock)
    who = admin(program.id)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=5, reason="x"), "g", clock)
    blocker = await asyncpg.connect(database)
    await blocker.execute("BEGIN")
    await blocker.execute(
        "SELECT 1 FROM accounts WHERE program_id = $1 AND customer_id = $2 FOR NO KEY UPDATE", program.id, ann
    )
    # a deduction goes through the general batcher, a grant through the grant batcher
    pending = asyncio.create_task(
        ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=-1, reason="x"), "k", clock)
    )
    await asyncio.sleep(0.3)
    await close_batchers()
    with pytest.raises(RuntimeError, match="shutting down"):
        await asyncio.wait_for(pending, timeout=5)
    await blocker.execute("ROLLBACK")
    await blocker.close()
