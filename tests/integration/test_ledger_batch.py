"""Many entries in one transaction: each checked in order, refusals isolated, balances exact."""

from __future__ import annotations

import asyncpg

from service.db.ledger import EntryToWrite, WrittenEntry, write_entries
from service.db.transaction import in_transaction
from service.domain.clock import ManualClock
from service.domain.errors import DomainError, InsufficientPoints
from service.domain.ledger import AccountKind, customer_account, system_account, transfer
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import balances, enrol, ledger_invariants


async def test_batch_runs_balances_entry_by_entry(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    ann = await enrol(program.id, "ann", clock)
    available = customer_account(ann, AccountKind.AVAILABLE)
    issued = system_account(AccountKind.ISSUED)
    redeemed = system_account(AccountKind.REDEEMED)
    items = [
        EntryToWrite(transfer(issued, available, 100, kind="grant"), "test"),
        EntryToWrite(transfer(available, redeemed, 60, kind="spend"), "test"),
        EntryToWrite(transfer(available, redeemed, 50, kind="spend"), "test"),  # only 40 left: refused
        EntryToWrite(transfer(issued, available, 5, kind="grant"), "test"),
        EntryToWrite(transfer(available, redeemed, 45, kind="spend"), "test"),
    ]

    async def work(connection: asyncpg.Connection) -> list[WrittenEntry | DomainError]:
        return await write_entries(connection, program.id, items, now=clock.now())

    results = await in_transaction(work)
    assert isinstance(results[2], InsufficientPoints)
    assert results[2].extra["available"] == 40
    written = [r for r in results if isinstance(r, WrittenEntry)]
    assert [p.balance_after for r in written for p in r.postings if p.balance_after is not None] == [
        100,
        40,
        45,
        0,
    ]
    assert (await balances(owner_connection, program.id, ann))["available"] == 0
    await ledger_invariants(owner_connection, program.id)
