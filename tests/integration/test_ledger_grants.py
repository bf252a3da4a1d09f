"""Grants (credit-only entries) written in one statement, against the real database: replays,
refusals remembered, concurrent requests with one key, settings changed under the writer,
and rows equal to what the general writer makes for the same entry."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from datetime import timedelta
from typing import Any

import asyncpg
import msgspec
import pytest

from service.db.idempotency import StoredRefusal
from service.db.ledger import (
    EntryToWrite,
    SettingsChanged,
    WrittenEntry,
    is_credit_only,
    write_credits_once,
    write_entries,
)
from service.db.transaction import autocommit, in_transaction
from service.domain.clock import ManualClock
from service.domain.errors import DomainError, IdempotencyKeyReused, InsufficientPoints, NotFound
from service.domain.expiry import ExpiryPolicy, ExpiryRule, expires_at
from service.domain.ledger import AccountKind, EntryDraft, PostingDraft, customer_account, system_account, transfer
from service.usecases import ledger
from service.usecases.group_commit import write_once
from service.usecases.idempotency import fingerprint
from service.usecases.ledger_settings import known_settings
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import admin, balances, claim_in_one_call, enrol, entry_count, sound

ISSUED = system_account(AccountKind.ISSUED)
REDEEMED = system_account(AccountKind.REDEEMED)


def grant(customer_id: str, amount: int, **kwargs: Any) -> EntryToWrite:
    draft = transfer(ISSUED, customer_account(customer_id, AccountKind.AVAILABLE), amount, kind="grant", **kwargs)
    return EntryToWrite(draft, "test")


def written(results: list[WrittenEntry | DomainError]) -> list[WrittenEntry]:
    """The entries of a batch that must have been written in full (a refusal fails the test)."""
    entries = [result for result in results if isinstance(result, WrittenEntry)]
    assert len(entries) == len(results), results
    return entries


async def stored(connection: asyncpg.Connection, program_id: str, key: str) -> tuple[int, bytes]:
    row = await connection.fetchrow(
        "SELECT status_code, response FROM idempotency_keys WHERE program_id = $1 AND key = $2", program_id, key
    )
    assert row is not None, f"nothing stored under {key}"
    return row["status_code"], bytes(row["response"])


async def test_a_grant_is_one_statement_and_its_replay_is_the_stored_answer(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    request = ledger.Adjustment(customer_id=ann, amount=70, reason="welcome")
    first = await ledger.adjust(who, request, "k1", clock)

    status, body = await stored(owner_connection, program.id, "k1")
    assert status == 200
    assert msgspec.json.decode(body, type=WrittenEntry) == first  # what a replay answers
    clock.advance(timedelta(minutes=5))
    assert await ledger.adjust(who, request, "k1", clock) == first
    with pytest.raises(IdempotencyKeyReused):
        await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=71, reason="welcome"), "k1", clock)
    with pytest.raises(IdempotencyKeyReused):  # the key is the program's, whatever the operation
        await ledger.hold_points(who, ledger.HoldRequest(customer_id=ann, amount=1), "k1", clock)
    assert (await balances(owner_connection, program.id, ann))["available"] == 70
    assert await entry_count(owner_connection, program.id) == 1
    await sound(owner_connection, program.id)


async def test_a_key_first_used_by_the_general_path_is_replayed_by_the_grant_path(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=50, reason="x"), "g", clock)
    deduction = ledger.Adjustment(customer_id=ann, amount=-20, reason="y")
    deducted = await ledger.adjust(who, deduction, "d", clock)  # group commit
    assert await ledger.adjust(who, deduction, "d", clock) == deducted
    with pytest.raises(IdempotencyKeyReused):  # a grant under the deduction's key
        await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=20, reason="y"), "d", clock)
    assert (await balances(owner_connection, program.id, ann))["available"] == 30


async def test_a_grant_to_an_unknown_customer_is_refused_and_remembered(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    request = ledger.Adjustment(customer_id="cus_nobody", amount=10, reason="x")
    with pytest.raises(NotFound) as refused:
        await ledger.adjust(who, request, "k", clock)
    assert refused.value.field == "customer_id"

    status, body = await stored(owner_connection, program.id, "k")
    assert status == 404
    remembered = msgspec.json.decode(body, type=StoredRefusal)
    assert (remembered.problem_type, remembered.detail, remembered.field) == (
        "not-found",
        "customer cus_nobody not found",
        "customer_id",
    )
    with pytest.raises(NotFound) as again:
        await ledger.adjust(who, request, "k", clock)
    assert str(again.value) == str(refused.value)
    with pytest.raises(IdempotencyKeyReused):
        await ledger.adjust(who, ledger.Adjustment(customer_id="cus_nobody", amount=11, reason="x"), "k", clock)
    assert await entry_count(owner_connection, program.id) == 0


async def test_the_refusal_of_a_grant_is_what_the_general_path_remembers(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    now = clock.now()
    unknown = grant("cus_nobody", 5)
    refused_alone = EntryToWrite(
        transfer(customer_account("cus_nobody", AccountKind.AVAILABLE), REDEEMED, 1, kind="x"), "t"
    )

    async def fast(connection: asyncpg.Connection) -> list[WrittenEntry | DomainError]:
        return await write_entries(connection, program.id, [unknown], now=now, keys=[("fast", b"f")])

    async def general(connection: asyncpg.Connection) -> list[WrittenEntry | DomainError]:
        items = [unknown, refused_alone]  # a debit sends the batch down the general path
        return await write_entries(connection, program.id, items, now=now, keys=[("general", b"f"), ("other", b"o")])

    [by_fast] = await in_transaction(fast)
    by_general, _ = await in_transaction(general)
    assert isinstance(by_fast, NotFound) and isinstance(by_general, NotFound)
    assert (str(by_fast), by_fast.field) == (str(by_general), by_general.field)
    assert await stored(owner_connection, program.id, "fast") == await stored(owner_connection, program.id, "general")


async def test_fifty_requests_with_one_key_at_once_make_one_effect(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=100, reason="x"), "before", clock)
    same = ledger.Adjustment(customer_id=ann, amount=9, reason="once")
    other = ledger.Adjustment(customer_id=ann, amount=10, reason="once")
    deduct = ledger.Adjustment(customer_id=ann, amount=-1, reason="once")  # group commit, not one statement
    requests = [same] * 40 + [other] * 5 + [deduct] * 5

    outcomes = await asyncio.gather(
        *(ledger.adjust(who, r, "the-key", clock) for r in requests), return_exceptions=True
    )

    assert await entry_count(owner_connection, program.id) == 2
    written = [outcome for outcome in outcomes if isinstance(outcome, WrittenEntry)]
    assert written and all(outcome == written[0] for outcome in written), outcomes
    change = next(p.amount for p in written[0].postings if p.balance_after is not None)
    winner = {9: same, 10: other, -1: deduct}[change]
    kinds = Counter(type(outcome).__name__ for outcome in outcomes)
    assert kinds == {"WrittenEntry": requests.count(winner), "IdempotencyKeyReused": 50 - requests.count(winner)}
    assert (await balances(owner_connection, program.id, ann))["available"] == 100 + change
    await sound(owner_connection, program.id)


async def test_write_once_with_one_key_at_once_on_parallel_connections(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    ann = await enrol(program.id, "ann", clock)
    request = ledger.Adjustment(customer_id=ann, amount=3, reason="once")

    def build(settings: Any, now: Any) -> EntryDraft:
        return ledger.adjustment_draft(request, settings, now)

    outcomes = await asyncio.gather(
        *(write_once(program.id, "k", fingerprint("adjust", request), build, "t", clock.now()) for _ in range(50)),
        return_exceptions=True,
    )
    assert all(isinstance(outcome, WrittenEntry) and outcome == outcomes[0] for outcome in outcomes), outcomes
    assert (await balances(owner_connection, program.id, ann))["available"] == 3
    assert await owner_connection.fetchval("SELECT count(*) FROM lots WHERE program_id = $1", program.id) == 1
    await sound(owner_connection, program.id)


async def test_grants_racing_holds_on_one_account_never_overdraw(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=100, reason="x"), "g0", clock)

    outcomes = await asyncio.gather(
        *(
            ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=10, reason="x"), f"g{n}", clock)
            for n in range(1, 31)
        ),
        *(ledger.hold_points(who, ledger.HoldRequest(customer_id=ann, amount=15), f"h{n}", clock) for n in range(30)),
        return_exceptions=True,
    )

    unexpected = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, InsufficientPoints)]
    assert not unexpected, unexpected
    holds = sum(isinstance(o, ledger.Hold) for o in outcomes)
    assert all(isinstance(o, WrittenEntry) for o in outcomes[:30])
    now = await balances(owner_connection, program.id, ann)
    assert (now["available"], now["held"]) == (400 - 15 * holds, 15 * holds)
    # the customer's postings, in entry id order, are its balance history
    history = await owner_connection.fetch(
        "SELECT p.amount, p.balance_after, p.account_version FROM postings p JOIN accounts a"
        " ON a.program_id = p.program_id AND a.id = p.account_id"
        " WHERE p.program_id = $1 AND a.code = $2 ORDER BY p.entry_id, p.line",
        program.id,
        f"customer:{ann}:available",
    )
    running = 0
    for version, row in enumerate(history, start=1):
        running += row["amount"]
        assert (row["balance_after"], row["account_version"]) == (running, version)
    await sound(owner_connection, program.id)


async def test_a_batch_of_grants_runs_balances_and_writes_what_the_general_path_writes(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """The same grants written by the one-statement path (all credit-only) and by the
    general path (a batch with a debit in it) leave the same rows, but for the ids."""
    ann, bob = await enrol(program.id, "ann", clock), await enrol(program.id, "bob", clock)
    expiry = clock.now() + timedelta(days=30)
    fast_items = [grant(ann, 10, lot_expires_at=expiry), grant(ann, 5), grant(ann, 7, metadata={"why": "é\n"})]
    assert all(is_credit_only(item) for item in fast_items)
    general_items = [grant(bob, 10, lot_expires_at=expiry), grant(bob, 5), grant(bob, 7, metadata={"why": "é\n"})]
    debit = EntryToWrite(transfer(customer_account(bob, AccountKind.AVAILABLE), REDEEMED, 1000, kind="spend"), "test")
    assert not is_credit_only(debit)
    now = clock.now()

    async def fast(connection: asyncpg.Connection) -> list[WrittenEntry | DomainError]:
        keys = [(f"fast-{n}", b"f") for n in range(3)]
        return await write_entries(connection, program.id, fast_items, now=now, keys=keys)

    async def general(connection: asyncpg.Connection) -> list[WrittenEntry | DomainError]:
        keys = [(f"general-{n}", b"f") for n in range(4)]
        return await write_entries(connection, program.id, [*general_items, debit], now=now, keys=keys)

    by_fast = written(await in_transaction(fast))
    *general_results, refused = await in_transaction(general)
    by_general = written(general_results)
    assert isinstance(refused, InsufficientPoints)
    assert [p.balance_after for e in by_fast for p in e.postings] == [
        None,
        10,
        None,
        15,
        None,
        22,
    ]

    async def rows(customer_id: str, entries: list[WrittenEntry], prefix: str) -> dict[str, Any]:
        ids = [entry.id for entry in entries]
        account = f"customer:{customer_id}:available"

        def renamed(record: asyncpg.Record) -> tuple[Any, ...]:
            return tuple(ids.index(v) if k in ("id", "entry_id") else v for k, v in dict(record).items())

        entry_rows = await owner_connection.fetch(
            "SELECT id, kind, posted_at, actor, reverses_entry_id, metadata FROM entries"
            " WHERE program_id = $1 AND id = ANY($2::bigint[]) ORDER BY id",
            program.id,
            ids,
        )
        posting_rows = await owner_connection.fetch(
            "SELECT p.entry_id, p.line, a.kind, p.unit, p.amount, p.balance_after, p.account_version, p.posted_at"
            " FROM postings p JOIN accounts a ON a.program_id = p.program_id AND a.id = p.account_id"
            " WHERE p.program_id = $1 AND p.entry_id = ANY($2::bigint[]) ORDER BY p.entry_id, p.line",
            program.id,
            ids,
        )
        lot_rows = await owner_connection.fetch(
            "SELECT entry_id, amount, remaining, earned_at, expires_at FROM lots"
            " WHERE program_id = $1 AND entry_id = ANY($2::bigint[]) ORDER BY entry_id",
            program.id,
            ids,
        )
        queued = await owner_connection.fetchval(
            "SELECT count(*) FROM seal_queue WHERE program_id = $1 AND entry_id = ANY($2::bigint[])", program.id, ids
        )
        account_row = await owner_connection.fetchrow(
            "SELECT balance, version, last_posted_at FROM accounts WHERE program_id = $1 AND code = $2",
            program.id,
            account,
        )
        answers = []
        for n in range(len(ids)):
            status, body = await stored(owner_connection, program.id, f"{prefix}-{n}")
            answer = msgspec.json.decode(body, type=WrittenEntry)
            assert answer == entries[n]  # the stored answer is the one given
            answers.append(
                (
                    status,
                    msgspec.structs.replace(
                        answer,
                        id=0,
                        postings=[
                            msgspec.structs.replace(p, account_id=0, account=p.account.replace(customer_id, "C"))
                            for p in answer.postings
                        ],
                    ),
                )
            )
        return {
            "entries": [renamed(r) for r in entry_rows],
            "postings": [renamed(r) for r in posting_rows],
            "lots": [renamed(r) for r in lot_rows],
            "queued": queued,
            "account": dict(account_row) if account_row else None,
            "answers": answers,
        }

    assert await rows(ann, by_fast, "fast") == await rows(bob, by_general, "general")
    await sound(owner_connection, program.id)


async def test_write_credits_once_answers_used_keys_and_unknown_customers_in_one_call(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    ann = await enrol(program.id, "ann", clock)
    call = functools.partial(claim_in_one_call, program.id, clock.now())

    first = await call([("a", b"1", grant(ann, 4)), ("b", b"2", grant("cus_nobody", 4))])
    assert isinstance(first[0], WrittenEntry) and isinstance(first[1], NotFound)
    second = await call(
        [
            ("a", b"1", grant(ann, 4)),
            ("b", b"2", grant("cus_nobody", 4)),
            ("c", b"3", grant(ann, 6)),
            ("a2", b"x", grant(ann, 1)),
        ]
    )
    assert second[0] == first[0]
    assert isinstance(second[1], NotFound) and str(second[1]) == str(first[1])
    assert isinstance(second[2], WrittenEntry) and second[2].postings[1].balance_after == 10
    assert isinstance(second[3], WrittenEntry) and second[3].postings[1].balance_after == 11
    assert second[3].id > second[2].id > first[0].id
    reused = await call([("c", b"other", grant(ann, 6))])
    assert isinstance(reused[0], IdempotencyKeyReused)
    with pytest.raises(ValueError, match="credit-only"):
        await call(
            [
                (
                    "d",
                    b"4",
                    EntryToWrite(transfer(customer_account(ann, AccountKind.AVAILABLE), REDEEMED, 1, kind="x"), "t"),
                )
            ]
        )
    await sound(owner_connection, program.id)


async def test_write_credits_once_answers_each_request_with_its_own_outcome_whatever_the_order(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """A used key behind new ones: the function answers used keys first, so the answers are
    paired with the requests by their position, not by the order of the rows."""
    ann = await enrol(program.id, "ann", clock)
    call = functools.partial(claim_in_one_call, program.id, clock.now())

    first = await call([("u1", b"1", grant(ann, 4)), ("u2", b"2", grant(ann, 5))])
    second = await call(
        [
            ("n1", b"3", grant(ann, 6)),
            ("u2", b"2", grant(ann, 5)),
            ("n2", b"4", grant(ann, 7)),
            ("u1", b"1", grant(ann, 4)),
        ]
    )
    assert second[1] == first[1] and second[3] == first[0]
    fresh = written([second[0], second[2]])
    assert [entry.postings[1].amount for entry in fresh] == [6, 7]
    assert [entry.postings[1].balance_after for entry in fresh] == [15, 22]
    await sound(owner_connection, program.id)


async def test_settings_changed_elsewhere_are_seen_before_the_grant_is_written(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=1, reason="x"), "g1", clock)  # settings known
    # another instance of the service changes the policy: this process's copy is stale
    await owner_connection.execute(
        "UPDATE programs SET expiry_policy = 'days', expiry_period = 30 WHERE id = $1", program.id
    )
    settings = await known_settings(program.id)
    assert settings.expiry == ExpiryRule()  # still the old one here

    async def stale_call() -> None:
        async with autocommit() as connection:
            await write_credits_once(
                connection,
                program.id,
                [("stale", b"s", grant(ann, 1))],
                now=clock.now(),
                time_zone=settings.time_zone,
                expiry=settings.expiry,
            )

    with pytest.raises(SettingsChanged):
        await stale_call()
    assert await owner_connection.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'stale'") == 0

    entry = await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=2, reason="x"), "g2", clock)
    lot_expiry = await owner_connection.fetchval(
        "SELECT expires_at FROM lots WHERE program_id = $1 AND entry_id = $2", program.id, entry.id
    )
    rule = ExpiryRule(ExpiryPolicy.DAYS, 30)
    assert lot_expiry == expires_at(rule, clock.now(), (await known_settings(program.id)).zone)
    assert (await known_settings(program.id)).expiry == rule


async def test_an_entry_that_is_not_a_grant_keeps_the_general_path(program: ProgramFixture, clock: ManualClock) -> None:
    ann = await enrol(program.id, "ann", clock)
    bob = await enrol(program.id, "bob", clock)
    both = EntryDraft(
        kind="x",
        postings=(
            PostingDraft(ISSUED, -2),
            PostingDraft(customer_account(ann, AccountKind.AVAILABLE), 1),
            PostingDraft(customer_account(bob, AccountKind.AVAILABLE), 1),
        ),
    )
    assert not is_credit_only(EntryToWrite(both, "t"))
    assert not is_credit_only(
        EntryToWrite(transfer(ISSUED, customer_account(ann, AccountKind.AVAILABLE), 0, kind="x"), "t")
    )
    assert not is_credit_only(
        EntryToWrite(transfer(ISSUED, customer_account(ann, AccountKind.AVAILABLE), 1, kind="x"), "t", reclaimed=(1,))
    )

    async def work(connection: asyncpg.Connection) -> list[WrittenEntry | DomainError]:
        return await write_entries(connection, program.id, [EntryToWrite(both, "t")], now=clock.now())

    [written] = await in_transaction(work)
    assert isinstance(written, WrittenEntry)
    assert [p.balance_after for p in written.postings] == [None, 1, 1]


async def test_in_a_batch_the_record_under_a_key_answers_each_request_by_its_own_fingerprint(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    first = ledger.Adjustment(customer_id=ann, amount=9, reason="x")
    other = ledger.Adjustment(customer_id=ann, amount=10, reason="x")
    original = await ledger.adjust(who, first, "k", clock)

    for order in ([other, first, other, first], [first, other, first, other]):
        outcomes = await asyncio.gather(*(ledger.adjust(who, r, "k", clock) for r in order), return_exceptions=True)
        for request, outcome in zip(order, outcomes, strict=True):
            if request is first:
                assert outcome == original
            else:
                assert isinstance(outcome, IdempotencyKeyReused), outcome
    assert (await balances(owner_connection, program.id, ann))["available"] == 9
