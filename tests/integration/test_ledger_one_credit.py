"""One credit-only entry of two postings is written by `append_credit_entry` (migration
0019), several by `append_credit_entries` (0010): both leave the same rows, apart from ids,
in every table a grant touches, store the same answers byte for byte, refuse and replay
alike and lock the same rows."""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from service.db import ledger as ledger_db
from service.db.ledger import EntryToWrite, WrittenEntry, write_entries
from service.db.transaction import in_transaction, transaction
from service.domain.clock import ManualClock
from service.domain.errors import DomainError, IdempotencyKeyReused, NotFound
from service.domain.ledger import AccountKind, EntryDraft, PostingDraft, customer_account, system_account
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import claim_in_one_call, enrol, sound

ISSUED = system_account(AccountKind.ISSUED)
KIND = "adjustment.grant"  # announces points.earned


def grant(
    customer_id: str,
    amount: int,
    *,
    customer_first: bool = False,
    expires: datetime | None = None,
    metadata: dict[str, Any] | None = None,
) -> EntryToWrite:
    credit = PostingDraft(customer_account(customer_id, AccountKind.AVAILABLE), amount)
    debit = PostingDraft(ISSUED, -amount)
    postings = (credit, debit) if customer_first else (debit, credit)
    draft = EntryDraft(kind=KIND, postings=postings, metadata=metadata or {}, lot_expires_at=expires)
    return EntryToWrite(draft, "tester")


@pytest.fixture
def one_entry_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls that took the one-entry function."""
    calls: list[int] = []
    original = ledger_db._append_one_credit

    async def counted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(1)
        return await original(*args, **kwargs)

    monkeypatch.setattr(ledger_db, "_append_one_credit", counted)
    return calls


def _shape(text: str, customer_id: str) -> str:
    """The answer's text with the customer's id and every number blanked: its layout."""
    return re.sub(r"\d+", "0", text.replace(customer_id, "C"))


async def _journal(
    owner: asyncpg.Connection, program_id: str, customer_id: str, entry_ids: list[int], keys: list[str]
) -> dict[str, Any]:
    """What was written for these entries of one customer (and under these keys), with the
    entry ids as their positions, accounts as their codes and the customer's id as C."""
    accounts = {
        row["id"]: row["code"].replace(customer_id, "C")
        for row in await owner.fetch("SELECT id, code FROM accounts WHERE program_id = $1", program_id)
    }
    position = {entry_id: n for n, entry_id in enumerate(entry_ids)}

    def entry(value: int | None) -> int | None:
        return None if value is None else position[value]

    entries = await owner.fetch(
        "SELECT id, kind, posted_at, actor, reverses_entry_id, metadata FROM entries"
        " WHERE program_id = $1 AND id = ANY($2::bigint[]) ORDER BY id",
        program_id,
        entry_ids,
    )
    postings = await owner.fetch(
        "SELECT entry_id, line, account_id, unit, amount, balance_after, account_version, posted_at FROM postings"
        " WHERE program_id = $1 AND entry_id = ANY($2::bigint[]) ORDER BY entry_id, line",
        program_id,
        entry_ids,
    )
    lots = await owner.fetch(
        "SELECT entry_id, account_id, remaining, amount, earned_at, expires_at FROM lots"
        " WHERE program_id = $1 AND entry_id = ANY($2::bigint[]) ORDER BY id",
        program_id,
        entry_ids,
    )
    queued = await owner.fetch(
        "SELECT entry_id FROM seal_queue WHERE program_id = $1 AND entry_id = ANY($2::bigint[]) ORDER BY entry_id",
        program_id,
        entry_ids,
    )
    balances = await owner.fetch(
        "SELECT code, balance, version, last_posted_at FROM accounts"
        " WHERE program_id = $1 AND customer_id = $2 ORDER BY code",
        program_id,
        customer_id,
    )
    events = await owner.fetch(
        "SELECT type, customer_id, payload::text AS payload, occurred_at FROM event_outbox"
        " WHERE program_id = $1 AND type = 'points.earned' AND (payload->>'entry_id')::bigint = ANY($2::bigint[])"
        " ORDER BY position",
        program_id,
        entry_ids,
    )
    records = await owner.fetch(
        "SELECT key, fingerprint, status_code, convert_from(response, 'UTF8') AS response FROM idempotency_keys"
        " WHERE program_id = $1 AND key = ANY($2::text[])",
        program_id,
        keys,
    )
    by_key = {row["key"]: row for row in records}

    def answer(text: str) -> Any:
        decoded = json.loads(text)
        if "postings" in decoded:
            decoded["id"] = entry(decoded["id"])
            for posting in decoded["postings"]:
                posting["account_id"] = accounts[posting["account_id"]]
                posting["account"] = posting["account"].replace(customer_id, "C")
        return decoded

    def event(payload: str) -> Any:
        decoded = json.loads(payload)
        decoded["entry_id"] = entry(decoded["entry_id"])
        decoded["customer_id"] = decoded["customer_id"].replace(customer_id, "C")
        return decoded

    return {
        "entries": [(entry(r["id"]), r["kind"], r["posted_at"], r["actor"], r["reverses_entry_id"], r["metadata"])
                    for r in entries],
        "postings": [
            (entry(r["entry_id"]), r["line"], accounts[r["account_id"]], r["unit"], r["amount"], r["balance_after"],
             r["account_version"], r["posted_at"])
            for r in postings
        ],
        "lots": [(entry(r["entry_id"]), accounts[r["account_id"]], *list(r.values())[2:]) for r in lots],
        "queued": [entry(r["entry_id"]) for r in queued],
        "balances": [(r["code"].replace(customer_id, "C"), *list(r.values())[1:]) for r in balances],
        "events": [(r["type"], r["customer_id"].replace(customer_id, "C"), event(r["payload"]), r["occurred_at"])
                   for r in events],
        "records": [
            (bytes(row["fingerprint"]), row["status_code"], answer(row["response"]),
             _shape(row["response"], customer_id))
            for row in (by_key[key] for key in keys)
        ],
    }  # fmt: skip


def _ids(outcomes: list[WrittenEntry | DomainError]) -> list[int]:
    return [outcome.id for outcome in outcomes if isinstance(outcome, WrittenEntry)]


async def _history(program_id: str, customers: list[str], now: datetime) -> None:
    """The same earlier grant for each customer, posted after `now` (so a later grant at
    `now` is posted at the account's last posting time), in one batch."""

    async def work(connection: asyncpg.Connection) -> list[WrittenEntry | DomainError]:
        items = [grant(customer, 3) for customer in customers]
        return await write_entries(connection, program_id, items, now=now + timedelta(minutes=1))

    assert all(isinstance(outcome, WrittenEntry) for outcome in await in_transaction(work))


async def test_in_a_transaction_one_entry_writes_what_a_batch_writes(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection, one_entry_calls: list[int]
) -> None:
    ann, bob, cara = [await enrol(program.id, name, clock) for name in ("ann", "bob", "cara")]
    now = clock.now()
    await _history(program.id, [ann, bob], now)
    expires = now + timedelta(days=30)

    def drafts(customer: str) -> list[EntryToWrite]:
        return [
            grant(customer, 10, expires=expires, metadata={"reason": 'é\n"x"', "n": 1}),
            grant(customer, 7, customer_first=True),
        ]

    async def alone(item: EntryToWrite, key: str) -> list[WrittenEntry | DomainError]:
        async def work(connection: asyncpg.Connection) -> list[WrittenEntry | DomainError]:
            return await write_entries(connection, program.id, [item], now=now, keys=[(key, b"fp")])

        return await in_transaction(work)

    async def batch(connection: asyncpg.Connection) -> list[WrittenEntry | DomainError]:
        items = [*drafts(bob), grant(cara, 5)]
        keys = [("b-0", b"fp"), ("b-1", b"fp"), ("c-0", b"fp")]
        return await write_entries(connection, program.id, items, now=now, keys=keys)

    by_one = [outcome for n, item in enumerate(drafts(ann)) for outcome in await alone(item, f"a-{n}")]
    assert len(one_entry_calls) == 2
    by_batch = (await in_transaction(batch))[:2]
    assert len(one_entry_calls) == 2
    assert [p.balance_after for e in by_one if isinstance(e, WrittenEntry) for p in e.postings] == [None, 13, 20, None]
    ann_rows = await _journal(owner_connection, program.id, ann, _ids(by_one), ["a-0", "a-1"])
    bob_rows = await _journal(owner_connection, program.id, bob, _ids(by_batch), ["b-0", "b-1"])
    assert ann_rows == bob_rows
    assert len(ann_rows["events"]) == 2 and ann_rows["entries"][0][2] == now + timedelta(minutes=1)
    for one, batched in zip(by_one, by_batch, strict=True):  # the answers given, but for ids
        assert isinstance(one, WrittenEntry) and isinstance(batched, WrittenEntry)
        assert [(p.line, p.unit, p.amount, p.balance_after) for p in one.postings] == [
            (p.line, p.unit, p.amount, p.balance_after) for p in batched.postings
        ]
        assert (one.kind, one.posted_at, one.actor, one.metadata) == (
            batched.kind,
            batched.posted_at,
            batched.actor,
            batched.metadata,
        )
    await sound(owner_connection, program.id)


async def test_without_keys_one_entry_writes_what_a_batch_writes(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection, one_entry_calls: list[int]
) -> None:
    """As an order's award is written: in the caller's transaction, no key."""
    ann, bob, cara = [await enrol(program.id, name, clock) for name in ("ann", "bob", "cara")]
    now = clock.now()

    async def alone(connection: asyncpg.Connection) -> list[WrittenEntry | DomainError]:
        return await write_entries(connection, program.id, [grant(ann, 4, expires=now)], now=now)

    async def batch(connection: asyncpg.Connection) -> list[WrittenEntry | DomainError]:
        return await write_entries(connection, program.id, [grant(bob, 4, expires=now), grant(cara, 1)], now=now)

    by_one = await in_transaction(alone)
    by_batch = (await in_transaction(batch))[:1]
    assert len(one_entry_calls) == 1
    ann_rows = await _journal(owner_connection, program.id, ann, _ids(by_one), [])
    assert ann_rows == await _journal(owner_connection, program.id, bob, _ids(by_batch), [])
    assert len(ann_rows["postings"]) == 2 and len(ann_rows["events"]) == 1
    assert await owner_connection.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE program_id = $1", program.id
    ) == 0  # fmt: skip
    await sound(owner_connection, program.id)


async def test_claimed_one_entry_writes_refuses_and_replays_as_a_batch_does(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection, one_entry_calls: list[int]
) -> None:
    ann, bob, cara = [await enrol(program.id, name, clock) for name in ("ann", "bob", "cara")]
    now = clock.now()
    await _history(program.id, [ann, bob], now)
    call = functools.partial(claim_in_one_call, program.id, now)

    by_one = await call([("a", b"1", grant(ann, 8, metadata={"x": [1, 2]}))])
    nobody_alone = await call([("n1", b"1", grant("cus_nobody", 8))])
    assert len(one_entry_calls) == 2
    by_batch = await call([("b", b"1", grant(bob, 8, metadata={"x": [1, 2]})), ("c", b"1", grant(cara, 2))])
    nobody_batched = await call([("n2", b"1", grant("cus_nobody", 8)), ("n3", b"1", grant("cus_other", 8))])
    assert len(one_entry_calls) == 2
    ann_rows = await _journal(owner_connection, program.id, ann, _ids(by_one), ["a"])
    assert ann_rows == await _journal(owner_connection, program.id, bob, _ids(by_batch[:1]), ["b"])
    assert ann_rows["records"][0][1] == 200

    # a refusal: the same outcome and the same record
    assert isinstance(nobody_alone[0], NotFound) and isinstance(nobody_batched[0], NotFound)
    assert str(nobody_alone[0]) == str(nobody_batched[0])
    records = await owner_connection.fetch(
        "SELECT key, fingerprint, status_code, response FROM idempotency_keys"
        " WHERE program_id = $1 AND key IN ('n1', 'n2') ORDER BY key",
        program.id,
    )
    assert [tuple(r.values())[1:] for r in records[:1]] == [tuple(r.values())[1:] for r in records[1:]]

    # replays: the key's record answers, whoever asks; another request under it is refused
    written = by_one[0]
    assert await call([("a", b"1", grant(ann, 8, metadata={"x": [1, 2]}))]) == [written]
    mixed = await call([("a", b"1", grant(ann, 8, metadata={"x": [1, 2]})), ("n1", b"1", grant("cus_nobody", 8))])
    assert mixed[0] == written
    assert isinstance(mixed[1], NotFound) and str(mixed[1]) == str(nobody_alone[0])
    [again] = await call([("n1", b"1", grant("cus_nobody", 8))])
    assert isinstance(again, NotFound) and str(again) == str(nobody_alone[0])
    [reused] = await call([("a", b"other", grant(ann, 9))])
    assert isinstance(reused, IdempotencyKeyReused)
    [reused_by_batch] = (await call([("a", b"other", grant(ann, 9)), ("d", b"1", grant(cara, 1))]))[:1]
    assert isinstance(reused_by_batch, IdempotencyKeyReused)
    assert await owner_connection.fetchval(
        "SELECT balance FROM accounts WHERE program_id = $1 AND customer_id = $2 AND kind = 'available'",
        program.id,
        ann,
    ) == 11  # fmt: skip
    await sound(owner_connection, program.id)


@pytest.mark.parametrize("entries", [1, 2])
async def test_the_customer_balance_is_locked_and_the_system_account_is_not(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection, entries: int
) -> None:
    ann = await enrol(program.id, "ann", clock)
    now = clock.now()

    async def locked(code: str) -> bool:
        """Whether another transaction finds the account's row locked."""
        try:
            async with owner_connection.transaction():
                await owner_connection.execute(
                    "SELECT FROM accounts WHERE program_id = $1 AND code = $2 FOR UPDATE NOWAIT", program.id, code
                )
        except asyncpg.LockNotAvailableError:
            return True
        return False

    async with transaction() as connection:
        items = [grant(ann, 2) for _ in range(entries)]
        outcomes = await write_entries(connection, program.id, items, now=now)
        assert all(isinstance(outcome, WrittenEntry) for outcome in outcomes)
        assert await locked(customer_account(ann, AccountKind.AVAILABLE).code)
        assert not await locked(ISSUED.code)
    await sound(owner_connection, program.id)
