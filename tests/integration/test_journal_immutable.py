"""The journal is append-only in the database itself, whoever asks, and tampering shows.

As the owner (a superuser) the append-only triggers refuse every change; as the app role
(the pool's connections) the missing privileges refuse it first. An unbalanced entry fails
at COMMIT (deferred constraint trigger). Changing a sealed entry behind the triggers' back
breaks the hash chain, and verification names the entry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import cast

import asyncpg
import pytest

from service.db.piccolo_conf import DB
from service.domain.clock import ManualClock
from service.usecases import ledger, ledger_jobs
from service.usecases.finance import verify_chain
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import admin, enrol, ledger_invariants

CHANGES = [
    "UPDATE entries SET kind = 'changed' WHERE program_id = $1",
    "UPDATE entries SET metadata = '{}' WHERE program_id = $1",
    "DELETE FROM entries WHERE program_id = $1",
    "UPDATE postings SET amount = amount * 2 WHERE program_id = $1",
    "UPDATE postings SET balance_after = 0 WHERE program_id = $1",
    "DELETE FROM postings WHERE program_id = $1",
    "UPDATE lot_allocations SET amount = amount + 1 WHERE program_id = $1",
    "DELETE FROM lot_allocations WHERE program_id = $1",
    "UPDATE entry_seals SET chain_hash = entry_hash WHERE program_id = $1",
    "DELETE FROM entry_seals WHERE program_id = $1",
]
TRUNCATES = ["TRUNCATE postings", "TRUNCATE entries CASCADE"]


@dataclass
class Journal:
    program_id: str
    customer_id: str
    entry_ids: list[int]


@pytest.fixture
async def journal(program: ProgramFixture, clock: ManualClock) -> Journal:
    """A program with a few entries (one consuming a lot), all sealed."""
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    grant = await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=500, reason="a"), "g1", clock)
    deduct = await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=-80, reason="b"), "d1", clock)
    bonus = await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=40, reason="c"), "g2", clock)
    assert await ledger_jobs.seal_chain(program.id) == 3
    return Journal(program.id, ann, [grant.id, deduct.id, bonus.id])


@pytest.fixture
async def app_connection(database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection from the app's pool, as the app role."""
    pool = DB.pool
    assert pool is not None
    async with pool.acquire() as proxy:
        connection = cast(asyncpg.Connection, proxy)
        if await connection.fetchval("SELECT current_user") != "loyalty_app":
            pytest.skip("the database has no loyalty_app role to connect as")
        yield connection


async def refusal(connection: asyncpg.Connection, statement: str, *args: object) -> asyncpg.PostgresError:
    """The error the statement fails with; it runs in a transaction that is always rolled back."""
    transaction = connection.transaction()
    await transaction.start()
    try:
        await connection.execute(statement, *args)
    except asyncpg.PostgresError as error:
        return error
    finally:
        await transaction.rollback()
    raise AssertionError(f"{statement!r} was allowed")


async def journal_rows(connection: asyncpg.Connection, program_id: str) -> list[asyncpg.Record]:
    return await connection.fetch(
        "SELECT e.id, e.kind, e.metadata, p.line, p.amount, p.balance_after FROM entries e"
        " JOIN postings p ON p.program_id = e.program_id AND p.entry_id = e.id"
        " WHERE e.program_id = $1 ORDER BY e.id, p.line",
        program_id,
    )


@pytest.mark.parametrize("statement", CHANGES)
async def test_owner_cannot_change_the_journal(
    journal: Journal, owner_connection: asyncpg.Connection, statement: str
) -> None:
    before = await journal_rows(owner_connection, journal.program_id)
    error = await refusal(owner_connection, statement, journal.program_id)
    assert isinstance(error, asyncpg.RestrictViolationError), error
    assert "append-only" in str(error)
    assert await journal_rows(owner_connection, journal.program_id) == before


@pytest.mark.parametrize("statement", CHANGES)
async def test_app_role_cannot_change_the_journal(
    journal: Journal, app_connection: asyncpg.Connection, statement: str
) -> None:
    error = await refusal(app_connection, statement, journal.program_id)
    assert isinstance(error, asyncpg.InsufficientPrivilegeError), error


@pytest.mark.parametrize("statement", TRUNCATES)
async def test_nobody_can_truncate_the_journal(
    journal: Journal,
    owner_connection: asyncpg.Connection,
    app_connection: asyncpg.Connection,
    statement: str,
) -> None:
    owner_error = await refusal(owner_connection, statement)
    assert isinstance(owner_error, asyncpg.RestrictViolationError), owner_error
    app_error = await refusal(app_connection, statement)
    assert isinstance(app_error, asyncpg.InsufficientPrivilegeError), app_error
    assert len(await journal_rows(owner_connection, journal.program_id)) == 6


# --- Balance at COMMIT -----------------------------------------------------------------


async def account_ids(connection: asyncpg.Connection, journal: Journal) -> dict[str, int]:
    rows = await connection.fetch(
        "SELECT kind, id FROM accounts WHERE program_id = $1 AND (customer_id IS NULL OR customer_id = $2)",
        journal.program_id,
        journal.customer_id,
    )
    return {row["kind"]: row["id"] for row in rows}


async def write_raw(connection: asyncpg.Connection, program_id: str, postings: list[tuple[int, str, int]]) -> int:
    """Insert an entry and its postings (account id, unit, amount) in the current transaction,
    the postings in one statement as the service writes them."""
    entry_id: int = await connection.fetchval(
        "INSERT INTO entries (program_id, kind, posted_at, actor) VALUES ($1, 'raw', now(), 'test') RETURNING id",
        program_id,
    )
    if postings:
        await connection.execute(
            "INSERT INTO postings (program_id, entry_id, line, account_id, unit, amount, posted_at)"
            " SELECT $1, $2, line, account_id, unit, amount, now()"
            " FROM unnest($3::smallint[], $4::bigint[], $5::text[], $6::bigint[]) AS p(line, account_id, unit, amount)",
            program_id,
            entry_id,
            list(range(1, len(postings) + 1)),
            [account_id for account_id, _, _ in postings],
            [unit for _, unit, _ in postings],
            [amount for _, _, amount in postings],
        )
    return entry_id


@pytest.mark.parametrize("as_owner", [False, True], ids=["app role", "owner"])
async def test_a_posting_cannot_be_added_to_an_entry_later(
    journal: Journal, owner_connection: asyncpg.Connection, app_connection: asyncpg.Connection, as_owner: bool
) -> None:
    connection = owner_connection if as_owner else app_connection
    ids = await account_ids(owner_connection, journal)
    async with connection.transaction():
        entry_id = await write_raw(
            connection, journal.program_id, [(ids["issued"], "POINTS", -10), (ids["adjustments"], "POINTS", 10)]
        )
    with pytest.raises(asyncpg.RestrictViolationError, match=f"entry {entry_id} already has postings"):
        await connection.execute(
            "INSERT INTO postings (program_id, entry_id, line, account_id, unit, amount, posted_at)"
            " VALUES ($1, $2, 3, $3, 'POINTS', 7, now())",
            journal.program_id,
            entry_id,
            ids["adjustments"],
        )
    assert (
        await owner_connection.fetchval(
            "SELECT sum(amount) FROM postings WHERE program_id = $1 AND entry_id = $2", journal.program_id, entry_id
        )
        == 0
    )


@pytest.mark.parametrize("as_owner", [False, True], ids=["app role", "owner"])
async def test_postings_of_an_entry_that_does_not_exist_are_refused(
    journal: Journal,
    other_program: ProgramFixture,
    owner_connection: asyncpg.Connection,
    app_connection: asyncpg.Connection,
    as_owner: bool,
) -> None:
    connection = owner_connection if as_owner else app_connection
    ids = await account_ids(owner_connection, journal)
    missing = await owner_connection.fetchval("SELECT max(id) + 1000 FROM entries")
    with pytest.raises(asyncpg.ForeignKeyViolationError, match=f"entry {missing}, which does not exist"):
        await connection.execute(
            "INSERT INTO postings (program_id, entry_id, line, account_id, unit, amount, posted_at)"
            " SELECT $1, $2, line, account_id, 'POINTS', amount, now()"
            " FROM unnest($3::smallint[], $4::bigint[], $5::bigint[]) AS p(line, account_id, amount)",
            journal.program_id,
            missing,
            [1, 2],
            [ids["issued"], ids["adjustments"]],
            [-10, 10],
        )
    with pytest.raises(asyncpg.ForeignKeyViolationError):  # another program's entry is not this program's
        await connection.execute(
            "INSERT INTO postings (program_id, entry_id, line, account_id, unit, amount, posted_at)"
            " VALUES ($1, $2, 1, $3, 'POINTS', -1, now()), ($1, $2, 2, $4, 'POINTS', 1, now())",
            other_program.id,
            journal.entry_ids[0],
            ids["issued"],
            ids["adjustments"],
        )


MISPLACED = {
    "an account in another unit": lambda ids, other: (ids["issued"], "CREDIT"),
    "another program's account": lambda ids, other: (other["issued"], "POINTS"),
    "no account at all": lambda ids, other: (max(ids.values()) + max(other.values()) + 1000, "POINTS"),
}


@pytest.mark.parametrize("as_owner", [False, True], ids=["app role", "owner"])
@pytest.mark.parametrize("misplaced", list(MISPLACED.values()), ids=list(MISPLACED))
async def test_a_posting_on_an_account_not_the_programs_in_its_unit_is_refused(
    journal: Journal,
    other_program: ProgramFixture,
    owner_connection: asyncpg.Connection,
    app_connection: asyncpg.Connection,
    as_owner: bool,
    misplaced: Callable[[dict[str, int], dict[str, int]], tuple[int, str]],
) -> None:
    connection = owner_connection if as_owner else app_connection
    ids = await account_ids(owner_connection, journal)
    other = {
        row["kind"]: row["id"]
        for row in await owner_connection.fetch(
            "SELECT kind, id FROM accounts WHERE program_id = $1 AND customer_id IS NULL", other_program.id
        )
    }
    account_id, unit = misplaced(ids, other)
    before = await journal_rows(owner_connection, journal.program_id)
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="names an account that is not the program's"):
        async with connection.transaction():
            await write_raw(connection, journal.program_id, [(account_id, unit, -10), (ids["adjustments"], unit, 10)])
    assert await journal_rows(owner_connection, journal.program_id) == before


# --- Lots name their entry and account --------------------------------------------------

LOT_INSERT = (
    "INSERT INTO lots (program_id, account_id, entry_id, amount, remaining, earned_at)"
    " VALUES ($1, $2, $3, 5, 5, now()) RETURNING id"
)


@pytest.mark.parametrize("as_owner", [False, True], ids=["app role", "owner"])
async def test_a_lot_must_name_an_entry_and_an_account_of_its_program(
    journal: Journal,
    other_program: ProgramFixture,
    owner_connection: asyncpg.Connection,
    app_connection: asyncpg.Connection,
    as_owner: bool,
) -> None:
    connection = owner_connection if as_owner else app_connection
    ids = await account_ids(owner_connection, journal)
    entry_id, account_id = journal.entry_ids[0], ids["available"]
    missing_entry = await owner_connection.fetchval("SELECT max(id) + 1000 FROM entries")
    missing_account = await owner_connection.fetchval("SELECT max(id) + 1000 FROM accounts")
    lots_before = await owner_connection.fetchval("SELECT count(*) FROM lots WHERE program_id = $1", journal.program_id)
    refused = [
        (journal.program_id, account_id, missing_entry, f"names entry {missing_entry}, which does not exist"),
        (journal.program_id, missing_account, entry_id, f"names account {missing_account}, which does not exist"),
        (other_program.id, account_id, entry_id, "which does not exist"),  # both are another program's
    ]
    for program_id, account, entry, message in refused:
        with pytest.raises(asyncpg.ForeignKeyViolationError, match=message):
            async with connection.transaction():
                await connection.execute(LOT_INSERT, program_id, account, entry)
    assert (
        await owner_connection.fetchval("SELECT count(*) FROM lots WHERE program_id = $1", journal.program_id)
        == lots_before
    )
    async with connection.transaction():  # the keys checked per statement, not merely refused
        await connection.execute(LOT_INSERT, journal.program_id, account_id, entry_id)


@pytest.mark.parametrize("as_owner", [False, True], ids=["app role", "owner"])
@pytest.mark.parametrize("column", ["entry_id", "account_id"])
async def test_a_lot_keeps_its_entry_and_account(
    journal: Journal,
    owner_connection: asyncpg.Connection,
    app_connection: asyncpg.Connection,
    as_owner: bool,
    column: str,
) -> None:
    connection = owner_connection if as_owner else app_connection
    ids = await account_ids(owner_connection, journal)
    other = {"entry_id": journal.entry_ids[2], "account_id": ids["held"]}[column]
    lot = await owner_connection.fetchrow(
        "SELECT id, remaining FROM lots WHERE program_id = $1 AND entry_id = $2",
        journal.program_id,
        journal.entry_ids[0],
    )
    assert lot is not None
    error = await refusal(
        connection,
        f"UPDATE lots SET {column} = $3 WHERE program_id = $1 AND id = $2",
        journal.program_id,
        lot["id"],
        other,
    )
    assert isinstance(error, asyncpg.RestrictViolationError), error
    assert "keeps its entry and account" in str(error)
    async with connection.transaction():  # what the ledger does change: what is left of it
        await connection.execute(
            "UPDATE lots SET remaining = remaining - 1 WHERE program_id = $1 AND id = $2", journal.program_id, lot["id"]
        )
    await connection.execute(
        "UPDATE lots SET remaining = remaining + 1 WHERE program_id = $1 AND id = $2", journal.program_id, lot["id"]
    )


UNBALANCED = {
    "no postings": [],
    "one posting": [("issued", "POINTS", -10)],
    "two postings not summing to zero": [("issued", "POINTS", -10), ("adjustments", "POINTS", 9)],
    "zero per entry but not per unit": [("issued", "POINTS", -10), ("credit_issued", "CREDIT", 10)],
    "one unit balanced, the other not": [
        ("issued", "POINTS", -10),
        ("adjustments", "POINTS", 10),
        ("credit_issued", "CREDIT", -5),
        ("credit_redeemed", "CREDIT", 4),
    ],
}


@pytest.mark.parametrize("as_owner", [False, True], ids=["app role", "owner"])
@pytest.mark.parametrize("postings", list(UNBALANCED.values()), ids=list(UNBALANCED))
async def test_unbalanced_entry_fails_at_commit(
    journal: Journal,
    owner_connection: asyncpg.Connection,
    app_connection: asyncpg.Connection,
    as_owner: bool,
    postings: list[tuple[str, str, int]],
) -> None:
    connection = owner_connection if as_owner else app_connection
    ids = await account_ids(owner_connection, journal)
    transaction = connection.transaction()
    await transaction.start()
    try:  # the statements succeed: the check is deferred to COMMIT
        entry_id = await write_raw(
            connection,
            journal.program_id,
            [(ids[kind], unit, amount) for kind, unit, amount in postings],
        )
    except BaseException:
        await transaction.rollback()
        raise
    with pytest.raises(asyncpg.CheckViolationError, match=f"entry {entry_id} "):
        await transaction.commit()
    assert not connection.is_in_transaction()
    assert not await owner_connection.fetchval(
        "SELECT count(*) FROM entries WHERE program_id = $1 AND id = $2",
        journal.program_id,
        entry_id,
    )
    await ledger_invariants(owner_connection, journal.program_id)


async def test_entry_balanced_in_each_of_two_units_is_accepted(
    journal: Journal, owner_connection: asyncpg.Connection, app_connection: asyncpg.Connection
) -> None:
    ids = await account_ids(owner_connection, journal)
    async with app_connection.transaction():
        entry_id = await write_raw(
            app_connection,
            journal.program_id,
            [
                (ids["issued"], "POINTS", -10),
                (ids["credit_issued"], "CREDIT", -250),
                (ids["adjustments"], "POINTS", 10),
                (ids["credit_redeemed"], "CREDIT", 250),
            ],
        )
    sums = await owner_connection.fetch(
        "SELECT unit, sum(amount) AS total, count(*) AS lines FROM postings"
        " WHERE program_id = $1 AND entry_id = $2 GROUP BY unit ORDER BY unit",
        journal.program_id,
        entry_id,
    )
    assert [(r["unit"], r["total"], r["lines"]) for r in sums] == [
        ("CREDIT", 0, 2),
        ("POINTS", 0, 2),
    ]
    await ledger_invariants(owner_connection, journal.program_id)


# --- Tamper evidence -------------------------------------------------------------------


async def behind_the_trigger(
    connection: asyncpg.Connection, table: str, trigger: str, statement: str, *args: object
) -> None:
    """What only someone able to switch the append-only trigger off could do (all in one
    transaction, so no other session ever sees the trigger disabled)."""
    async with connection.transaction():
        await connection.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
        status = await connection.execute(statement, *args)
        await connection.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")
    assert status.endswith(" 1"), status


TAMPERING = {
    "posting amount": (
        "postings",
        "postings_append_only",
        "UPDATE postings SET amount = amount + 1 WHERE program_id = $1 AND entry_id = $2 AND line = 2",
        "UPDATE postings SET amount = amount - 1 WHERE program_id = $1 AND entry_id = $2 AND line = 2",
    ),
    "entry metadata": (
        "entries",
        "entries_append_only",
        "UPDATE entries SET metadata = jsonb_set(metadata, '{reason}', '\"forged\"') WHERE program_id = $1 AND id = $2",
        "UPDATE entries SET metadata = jsonb_set(metadata, '{reason}', '\"b\"') WHERE program_id = $1 AND id = $2",
    ),
    # not hashed, but what balances as of an instant and statements read: verification
    # checks that each follows from what is hashed (the entry's time, the amounts before it)
    "posting time": (
        "postings",
        "postings_append_only",
        "UPDATE postings SET posted_at = posted_at - interval '30 days' WHERE program_id = $1 AND entry_id = $2"
        " AND line = 2",
        "UPDATE postings SET posted_at = posted_at + interval '30 days' WHERE program_id = $1 AND entry_id = $2"
        " AND line = 2",
    ),
    "balance after": (
        "postings",
        "postings_append_only",
        "UPDATE postings SET balance_after = balance_after + 1000 WHERE program_id = $1 AND entry_id = $2"
        " AND balance_after IS NOT NULL",
        "UPDATE postings SET balance_after = balance_after - 1000 WHERE program_id = $1 AND entry_id = $2"
        " AND balance_after IS NOT NULL",
    ),
    "account version": (
        "postings",
        "postings_append_only",
        "UPDATE postings SET account_version = account_version + 1 WHERE program_id = $1 AND entry_id = $2"
        " AND account_version IS NOT NULL",
        "UPDATE postings SET account_version = account_version - 1 WHERE program_id = $1 AND entry_id = $2"
        " AND account_version IS NOT NULL",
    ),
}


@pytest.mark.parametrize("what", list(TAMPERING))
async def test_changing_a_sealed_entry_breaks_the_chain_there(
    journal: Journal, owner_connection: asyncpg.Connection, what: str
) -> None:
    table, trigger, tamper, restore = TAMPERING[what]
    target = journal.entry_ids[1]  # the middle one: the break must name it, not its neighbours
    report = await verify_chain(journal.program_id)
    assert (report.valid, report.sealed, report.unsealed) == (True, 3, 0)

    await behind_the_trigger(owner_connection, table, trigger, tamper, journal.program_id, target)
    try:
        report = await verify_chain(journal.program_id)
        assert not report.valid, report
        assert report.first_break is not None
        assert (report.first_break.entry_id, report.first_break.seq) == (target, 2)
        assert "does not match" in report.first_break.reason
    finally:
        await behind_the_trigger(owner_connection, table, trigger, restore, journal.program_id, target)

    report = await verify_chain(journal.program_id)
    assert report.valid and report.first_break is None, report
    await ledger_invariants(owner_connection, journal.program_id)


async def without_triggers(connection: asyncpg.Connection, *statements: str, program_id: str, entry_id: int) -> None:
    """Statements run as a superuser with every trigger (foreign keys included) off."""
    async with connection.transaction():
        await connection.execute("SET LOCAL session_replication_role = replica")
        for statement in statements:
            await connection.execute(statement, program_id, entry_id)


REMOVALS = {
    "entry deleted, seal kept": (
        [f"DELETE FROM {table} WHERE program_id = $1 AND entry_id = $2" for table in ("lot_allocations", "postings")]
        + ["DELETE FROM entries WHERE program_id = $1 AND id = $2"],
        2,
        "missing",
    ),
    "entry and seal deleted": (
        [
            f"DELETE FROM {table} WHERE program_id = $1 AND entry_id = $2"
            for table in ("lot_allocations", "postings", "entry_seals")
        ]
        + ["DELETE FROM entries WHERE program_id = $1 AND id = $2"],
        3,
        "sequence jumps",
    ),
    "seals swapped": (
        [
            "UPDATE entry_seals SET seq = seq + 1000 WHERE program_id = $1 AND seq IN (2, 3) AND $2 > 0",
            "UPDATE entry_seals SET seq = 5 - (seq - 1000) WHERE program_id = $1 AND seq IN (1002, 1003) AND $2 > 0",
        ],
        2,
        "does not follow",
    ),
}


@pytest.mark.parametrize("what", list(REMOVALS))
async def test_removing_or_reordering_sealed_entries_breaks_the_chain(
    journal: Journal, owner_connection: asyncpg.Connection, what: str
) -> None:
    statements, seq, reason = REMOVALS[what]
    await without_triggers(owner_connection, *statements, program_id=journal.program_id, entry_id=journal.entry_ids[1])
    report = await verify_chain(journal.program_id)
    assert not report.valid and report.first_break is not None, report
    assert report.first_break.seq == seq and reason in report.first_break.reason, report.first_break


# --- Anchors: what the chain alone cannot show ---------------------------------------------


async def test_a_report_names_the_chain_head_to_record_as_an_anchor(
    journal: Journal, owner_connection: asyncpg.Connection, clock: ManualClock
) -> None:
    report = await verify_chain(journal.program_id)
    last = await owner_connection.fetchrow(
        "SELECT seq, entry_id, chain_hash FROM entry_seals WHERE program_id = $1 ORDER BY seq DESC LIMIT 1",
        journal.program_id,
    )
    assert last is not None and report.head is not None
    assert (report.head.seq, report.head.entry_id, report.head.chain_hash) == (3, journal.entry_ids[2], last[2].hex())
    # the anchor holds later, when more entries follow it, in upper-case hex too
    who = admin(journal.program_id)
    await ledger.adjust(who, ledger.Adjustment(customer_id=journal.customer_id, amount=5, reason="d"), "g3", clock)
    assert await ledger_jobs.seal_chain(journal.program_id) == 1
    later = await verify_chain(journal.program_id, (3, report.head.chain_hash.upper()))
    assert later.valid and later.anchor is not None and later.anchor.holds, later
    assert later.head is not None and later.head.seq == 4


async def test_a_chain_cut_short_verifies_alone_but_not_against_its_anchor(
    journal: Journal, owner_connection: asyncpg.Connection
) -> None:
    anchor = await verify_chain(journal.program_id)
    assert anchor.head is not None
    last = journal.entry_ids[2]
    await without_triggers(
        owner_connection,
        *[
            f"DELETE FROM {table} WHERE program_id = $1 AND entry_id = $2"
            for table in ("lot_allocations", "lots", "postings", "entry_seals", "seal_queue")
        ],
        "DELETE FROM entries WHERE program_id = $1 AND id = $2",
        program_id=journal.program_id,
        entry_id=last,
    )
    alone = await verify_chain(journal.program_id)
    assert alone.valid and alone.last_seq == 2, alone  # what an anchor is for
    checked = await verify_chain(journal.program_id, (anchor.head.seq, anchor.head.chain_hash))
    assert not checked.valid and checked.first_break is not None, checked
    assert checked.first_break.seq == 3 and "ends at seq 2" in checked.first_break.reason
    assert checked.anchor is not None and not checked.anchor.holds and checked.head is None


async def test_a_chain_rewritten_up_to_its_anchor_fails_against_it(
    journal: Journal, owner_connection: asyncpg.Connection
) -> None:
    """Someone able to switch the triggers off changes an entry and reseals it and every
    entry after it: the chain is consistent again, and only the anchor shows it."""
    anchor = await verify_chain(journal.program_id)
    assert anchor.head is not None
    target = journal.entry_ids[1]
    await without_triggers(
        owner_connection,
        "UPDATE entries SET metadata = jsonb_set(metadata, '{reason}', '\"forged\"') WHERE program_id = $1 AND id = $2",
        "DELETE FROM entry_seals WHERE program_id = $1 AND seq >= 2 AND $2 > 0",
        "INSERT INTO seal_queue (program_id, entry_id) SELECT $1, id FROM entries WHERE program_id = $1 AND id >= $2",
        program_id=journal.program_id,
        entry_id=target,
    )
    assert await ledger_jobs.seal_chain(journal.program_id) == 2
    alone = await verify_chain(journal.program_id)
    assert alone.valid and alone.head is not None and alone.head.chain_hash != anchor.head.chain_hash, alone
    checked = await verify_chain(journal.program_id, (anchor.head.seq, anchor.head.chain_hash))
    assert not checked.valid and checked.first_break is not None, checked
    assert (checked.first_break.seq, checked.first_break.entry_id) == (3, journal.entry_ids[2])
    assert "not the anchored one" in checked.first_break.reason


async def test_an_anchored_seq_the_chain_skips_is_named_as_missing_not_as_beyond_the_end(
    journal: Journal, owner_connection: asyncpg.Connection
) -> None:
    """The anchored link renumbered away (seals 1, 2, 4: the chain goes on past the anchor):
    the anchor fails, and the report does not claim the chain ends before it."""
    anchor = await verify_chain(journal.program_id)
    assert anchor.head is not None and anchor.head.seq == 3
    await without_triggers(
        owner_connection,
        "UPDATE entry_seals SET seq = seq + 1 WHERE program_id = $1 AND seq = 3 AND $2 > 0",
        program_id=journal.program_id,
        entry_id=journal.entry_ids[2],
    )
    checked = await verify_chain(journal.program_id, (anchor.head.seq, anchor.head.chain_hash))
    assert not checked.valid and checked.first_break is not None, checked
    assert checked.anchor is not None and not checked.anchor.holds
    assert checked.first_break.seq == 3, checked.first_break
    assert "no link at the anchored seq 3" in checked.first_break.reason, checked.first_break
