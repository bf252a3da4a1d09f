"""Sealing the hash chain from the queue: by key however long the queue, and late commits too."""

from __future__ import annotations

import asyncpg
import pytest

from service.db.chain import seal_batch
from service.db.ledger import EntryToWrite, WrittenEntry, write_entries, write_entry
from service.db.transaction import in_transaction
from service.domain.clock import ManualClock
from service.domain.errors import DomainError
from service.domain.ledger import AccountKind, customer_account, system_account, transfer
from service.usecases import jobs, ledger_jobs
from service.usecases.finance import verify_chain
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import enrol

BACKLOG = 50_000  # queue rows behind the batch
FAR = 10**15  # above any real entry id, so the batch takes the real entries first


def grant(customer_id: str, amount: int) -> EntryToWrite:
    available = customer_account(customer_id, AccountKind.AVAILABLE)
    return EntryToWrite(transfer(system_account(AccountKind.ISSUED), available, amount, kind="grant"), "test")


async def grant_many(program_id: str, customer_id: str, count: int, clock: ManualClock) -> None:
    async def work(connection: asyncpg.Connection) -> list[WrittenEntry | DomainError]:
        items = [grant(customer_id, 1 + n % 7) for n in range(count)]
        return await write_entries(connection, program_id, items, now=clock.now())

    assert all(isinstance(result, WrittenEntry) for result in await in_transaction(work))


async def queue_rows_read(connection: asyncpg.Connection) -> int:
    """Rows of seal_queue this backend has read and not yet reported, whatever the plan."""
    count: int = await connection.fetchval(
        "SELECT seq_tup_read + idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relname = 'seal_queue'"
    )
    return count


@pytest.mark.parametrize("analyzed", [False, True], ids=["no statistics", "fresh statistics"])
async def test_a_batch_takes_its_queue_rows_by_key_behind_a_long_backlog(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection, analyzed: bool
) -> None:
    ann = await enrol(program.id, "ann", clock)
    await grant_many(program.id, ann, 1000, clock)
    connection = owner_connection
    outer = connection.transaction()
    await outer.start()
    try:  # the backlog and the seals are rolled back at the end
        await connection.execute(
            "INSERT INTO seal_queue (program_id, entry_id) SELECT $1, $2::bigint + g FROM generate_series(1, $3) g",
            program.id,
            FAR,
            BACKLOG,
        )
        if analyzed:
            await connection.execute("ANALYZE seal_queue")
        before = await queue_rows_read(connection)
        sealed = (await seal_batch(connection, program.id, 1000)).ids
        rows_read = await queue_rows_read(connection) - before
    finally:
        await outer.rollback()
    assert len(sealed) == 1000 and max(sealed) < FAR
    assert rows_read <= 2 * 1000, f"{rows_read} queue rows read to take 1000 of {BACKLOG + 1000}"


async def test_an_entry_committed_behind_a_sealed_batch_is_sealed_by_the_next_run(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    ann, bob = await enrol(program.id, "ann", clock), await enrol(program.id, "bob", clock)
    async with owner_connection.transaction():  # takes its entry id first, commits last
        late = await write_entry(owner_connection, program.id, grant(bob, 5).draft, actor="test", now=clock.now())
        await grant_many(program.id, ann, 3, clock)
        first_run = await ledger_jobs.seal_chain(program.id, batch=2)
    second_run = await ledger_jobs.seal_chain(program.id, batch=2)

    report = await verify_chain(program.id)
    seq_of_late = await owner_connection.fetchval(
        "SELECT seq FROM entry_seals WHERE program_id = $1 AND entry_id = $2", program.id, late.id
    )
    assert (first_run, second_run, seq_of_late) == (3, 1, 4)
    assert report.valid and (report.sealed, report.unsealed) == (4, 0), report


async def test_a_program_whose_sealing_fails_does_not_stop_the_others(
    program: ProgramFixture, other_program: ProgramFixture, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler seals every program every second (jobs.seal_all): one program's failure
    must not leave the programs after it unsealed until the next full round."""

    async def programs(_: asyncpg.Connection) -> list[str]:
        return [program.id, other_program.id]

    original = ledger_jobs.seal_chain

    async def seal(program_id: str, batch: int = 1000) -> int:
        if program_id == program.id:
            raise asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout")
        return await original(program_id, batch)

    monkeypatch.setattr(jobs, "program_ids", programs)
    monkeypatch.setattr(ledger_jobs, "seal_chain", seal)
    await grant_many(other_program.id, await enrol(other_program.id, "bob", clock), 2, clock)
    await jobs.seal_all()
    report = await verify_chain(other_program.id)
    assert report.unsealed == 0, report
