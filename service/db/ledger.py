"""Writing entries, set-based: lock every customer balance the entries touch in one
statement ordered by id, decide each entry in order against running balances (the pure
domain does the checking and the lot planning), then append entries, postings, lot
movements and seal-queue rows with one statement per table, however many entries.

Credit-only entries (grants: see `credited_only`) have nothing to decide against the
account's state, so a batch of them is one call of `append_credit_entries` (migration
0010): balances, entries, postings, lots, seal-queue rows and idempotency records in one
statement; with `write_credits_once` it also claims the idempotency keys, so a grant in
a transaction of its own is one round trip. A call of one such entry of two postings (a
grant, an order's award) takes `append_credit_entry` (migration 0019) instead: the same
rows, answer and locks, from plain statements with scalar arguments, which for one entry
cost about a third less server CPU than the batch-shaped statement.

An entry that announces points earned (`points_earned_by`: a grant or a referral reward of
points) has its `points.earned` appended to the event outbox by the statement that writes
it, so however many grants a batch holds, their events cost no statement of their own, and
an entry not written (refused, or a replayed idempotency key) emits nothing."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from service.db.events import Announcement, announcement, announcement_columns, outbox_rows
from service.db.idempotency import Stored, encode_outcome, remember, replay
from service.db.ledger_accounts import system_account_ids
from service.domain.errors import DomainError, NotFound
from service.domain.events import EventType, points_earned_by
from service.domain.expiry import ExpiryRule
from service.domain.ledger import (
    AccountRef,
    EntryDraft,
    NewLot,
    OpenLot,
    Slice,
    check_balances,
    credited_only,
    net_by_account,
    plan_lots,
    validate_entry,
)


class WrittenPosting(msgspec.Struct, frozen=True):
    line: int
    account_id: int
    account: str
    unit: str
    amount: int
    balance_after: int | None


class WrittenEntry(msgspec.Struct, frozen=True):
    id: int
    kind: str
    posted_at: datetime
    actor: str
    metadata: dict[str, Any]
    reverses_entry_id: int | None
    postings: list[WrittenPosting]


class EntryToWrite(msgspec.Struct, frozen=True):
    """A draft with what only its writer knows: who asks and, for a reversal, the slices
    its original consumed (given back) and the lots it created (taken back first)."""

    draft: EntryDraft
    actor: str
    restored: tuple[Slice, ...] = ()
    reclaimed: tuple[int, ...] = ()


@dataclass
class _Account:
    """A locked customer account as the batch moves it along."""

    id: int
    balance: int
    version: int
    last_posted_at: datetime | None
    lots: list[OpenLot] = field(default_factory=list)
    touched: bool = False


@dataclass
class _Rows:
    """Everything the batch appends, column by column."""

    entries: list[tuple[Any, ...]] = field(default_factory=list)
    postings: list[tuple[Any, ...]] = field(default_factory=list)
    consumed: list[tuple[int, int, int]] = field(default_factory=list)  # entry, lot, amount
    created: list[tuple[int, int, int, int, int, datetime, datetime | None]] = field(default_factory=list)
    # created: lot id, entry, account, remaining after the batch, amount, earned at, expires at


_RESERVE = (
    "SELECT ARRAY(SELECT nextval('entry_id_seq') FROM generate_series(1, $1::int)) AS entries,"
    " ARRAY(SELECT nextval(pg_get_serial_sequence('lots', 'id')) FROM generate_series(1, $2::int)) AS lots"
)


class _Reserved:
    """Entry and lot ids taken from their sequences ahead of the writes (gaps are harmless)."""

    def __init__(self, entries: list[int], lots: list[int]) -> None:
        self.entries = iter(entries)
        self.lots = iter(lots)

    async def next_lot(self, connection: asyncpg.Connection) -> int:
        lot_id = next(self.lots, None)
        if lot_id is None:  # planning made more lots than foreseen
            row = await connection.fetchrow(_RESERVE, 0, 16)
            assert row is not None
            self.lots = iter(row["lots"])
            lot_id = next(self.lots)
        return lot_id


async def _lock_customer_accounts(
    connection: asyncpg.Connection,
    program_id: str,
    refs: Sequence[AccountRef],
    entries: int,
    lots: int,
) -> tuple[dict[AccountRef, _Account], _Reserved]:
    """Lock the accounts (one statement, in id order) and reserve ids in the same round trip."""
    by_code = {ref.code: ref for ref in refs}
    row = await connection.fetchrow(
        f"WITH locked AS (SELECT id, code, balance, version, last_posted_at FROM accounts"
        f" WHERE program_id = $3 AND code = ANY($4::text[]) ORDER BY id FOR NO KEY UPDATE),"
        # the ids are drawn only once every lock is held (the count forces the lock scan
        # first), so an entry written after another on the same account gets a higher id
        f" reserved AS MATERIALIZED ({_RESERVE} FROM (SELECT count(*) FROM locked) AS held)"
        f" SELECT reserved.*, ARRAY(SELECT ROW(id, code, balance, version, last_posted_at) FROM locked) AS locked"
        f" FROM reserved",
        entries,
        lots,
        program_id,
        list(by_code),
    )
    assert row is not None
    accounts = {
        by_code[code]: _Account(account_id, balance, version, last_posted_at)
        for account_id, code, balance, version, last_posted_at in row["locked"]
    }
    return accounts, _Reserved(list(row["entries"]), list(row["lots"]))


async def _load_open_lots(
    connection: asyncpg.Connection, program_id: str, accounts: dict[AccountRef, _Account]
) -> None:
    by_id = {account.id: account for account in accounts.values()}
    rows = await connection.fetch(
        "SELECT id, account_id, remaining, earned_at, expires_at FROM lots"
        " WHERE program_id = $1 AND account_id = ANY($2::bigint[]) AND remaining > 0",
        program_id,
        list(by_id),
    )
    for row in rows:
        by_id[row["account_id"]].lots.append(OpenLot(row["id"], row["remaining"], row["earned_at"], row["expires_at"]))


def _decide(
    item: EntryToWrite, accounts: dict[AccountRef, _Account], now: datetime
) -> tuple[dict[AccountRef, int], tuple[Slice, ...], tuple[NewLot, ...]]:
    """Check one entry against the running state; raises a DomainError and changes nothing."""
    draft = item.draft
    validate_entry(draft)
    net = net_by_account(draft.postings)
    missing = [ref for ref in net if ref.is_customer and ref not in accounts]
    if missing:
        raise NotFound(f"customer {missing[0].customer_id} not found", field="customer_id")
    after = check_balances(draft, {ref: accounts[ref].balance for ref in net if ref.is_customer})
    debited = {ref: accounts[ref].lots for ref, change in net.items() if ref.is_customer and change < 0}
    plan = plan_lots(draft, debited, now, item.restored, item.reclaimed)
    return after, plan.consumed, plan.created


def _apply_lots(accounts: dict[AccountRef, _Account], net: dict[AccountRef, int], consumed: Sequence[Slice]) -> None:
    taken: dict[int, int] = {}
    for piece in consumed:
        taken[piece.lot_id] = taken.get(piece.lot_id, 0) + piece.amount
    for ref, change in net.items():
        if ref.is_customer and change < 0:
            account = accounts[ref]
            account.lots = [
                msgspec.structs.replace(lot, remaining=lot.remaining - taken.get(lot.id, 0))
                for lot in account.lots
                if lot.remaining - taken.get(lot.id, 0) > 0
            ]


async def write_entries(
    connection: asyncpg.Connection,
    program_id: str,
    items: Sequence[EntryToWrite],
    *,
    now: datetime,
    keys: Sequence[tuple[str, bytes]] | None = None,
) -> list[WrittenEntry | DomainError]:
    """Append the entries that pass their checks, in order, inside the caller's transaction.

    Each result is the written entry or the refusal of that entry alone; a refused entry
    changes nothing and does not stop the others. With `keys` (idempotency key and request
    fingerprint per item), each outcome is remembered under its key in the same statement."""
    credited = [_credited_only(item) for item in items]
    if items and all(account is not None for account in credited):
        if len(items) == 1 and _one_credit_lines(items[0]) is not None:
            row = await _append_one_credit(connection, program_id, items[0], now, keys[0] if keys else None)
            return [_credit_outcome(items[0], credited[0], row)]
        arguments = [program_id, now, *_credit_arguments(items, credited, keys)]
        announced = _credit_announcements(items, now)
        if announced:
            answers = await connection.fetch(_APPEND_CREDITS_ANNOUNCING, *arguments, *announcement_columns(announced))
        else:
            answers = await connection.fetch(_APPEND_CREDITS, *arguments)
        return [_credit_outcome(i, a, row) for i, a, row in zip(items, credited, answers, strict=True)]
    refs = sorted({p.account for item in items for p in item.draft.postings if p.account.is_customer}, key=str)
    credits = sum(1 for item in items for p in item.draft.postings if p.account.is_customer and p.amount > 0)
    accounts, reserved = await _lock_customer_accounts(connection, program_id, refs, len(items), credits)
    debits = {
        ref: accounts[ref]
        for item in items
        for ref, change in net_by_account(item.draft.postings).items()
        if ref.is_customer and change < 0 and ref in accounts
    }
    if debits:
        await _load_open_lots(connection, program_id, debits)
    system_ids = await system_account_ids(connection, program_id)

    # per entry: the customer balances before it (the batch moves them entry by entry)
    decided: list[tuple[EntryToWrite, dict[AccountRef, int], tuple[Slice, ...], tuple[tuple[int, NewLot], ...]]] = []
    batch_lots: list[NewLot] = []
    results: list[WrittenEntry | DomainError | None] = []
    for item in items:
        try:
            after, consumed, planned = _decide(item, accounts, now)
        except DomainError as refusal:
            results.append(refusal)
            continue
        net = net_by_account(item.draft.postings)
        before = {ref: accounts[ref].balance for ref in after}
        _apply_lots(accounts, net, consumed)
        for ref, balance in after.items():
            accounts[ref].balance = balance
        new_ids = []
        for lot in planned:  # later entries of the batch may spend these lots already
            temporary_id = -(len(batch_lots) + 1)
            batch_lots.append(lot)
            new_ids.append(temporary_id)
            accounts[lot.account].lots.append(OpenLot(temporary_id, lot.amount, lot.earned_at, lot.expires_at))
        decided.append((item, before, consumed, tuple(zip(new_ids, planned, strict=True))))
        results.append(None)
    if not decided:
        refusals = [r for r in results if r is not None]
        if keys:
            await remember(connection, program_id, list(keys), refusals)
        return refusals

    entry_ids = [next(reserved.entries) for _ in decided]
    lot_ids = {-(index + 1): await reserved.next_lot(connection) for index in range(len(batch_lots))}
    left = {lot.id: lot.remaining for account in accounts.values() for lot in account.lots if lot.id < 0}
    rows = _Rows()
    written: list[WrittenEntry] = []
    for entry_id, (item, before, consumed, created) in zip(entry_ids, decided, strict=True):
        draft = item.draft
        touched = [accounts[p.account] for p in draft.postings if p.account.is_customer]
        posted_at = max([now, *(a.last_posted_at for a in touched if a.last_posted_at)])
        rows.entries.append(
            (
                entry_id,
                draft.kind,
                posted_at,
                item.actor,
                draft.reverses_entry_id,
                msgspec.json.encode(draft.metadata).decode(),
            )
        )
        postings: list[WrittenPosting] = []
        running: dict[AccountRef, int] = {}
        for line, posting in enumerate(draft.postings, start=1):
            balance_after: int | None = None
            version: int | None = None
            if posting.account.is_customer:
                account = accounts[posting.account]
                balance_after = running.get(posting.account, before[posting.account]) + posting.amount
                running[posting.account] = balance_after
                account.version += 1
                account.last_posted_at = posted_at
                account.touched = True
                version = account.version
                account_id = account.id
            else:
                account_id = system_ids[posting.account.kind]
            rows.postings.append(
                (
                    entry_id,
                    line,
                    account_id,
                    posting.account.unit.value,
                    posting.amount,
                    balance_after,
                    version,
                    posted_at,
                )
            )
            postings.append(
                WrittenPosting(
                    line,
                    account_id,
                    posting.account.code,
                    posting.account.unit.value,
                    posting.amount,
                    balance_after,
                )
            )
        rows.consumed.extend((entry_id, lot_ids.get(piece.lot_id, piece.lot_id), piece.amount) for piece in consumed)
        for temporary_id, lot in created:
            rows.created.append(
                (
                    lot_ids[temporary_id],
                    entry_id,
                    accounts[lot.account].id,
                    left.get(temporary_id, 0),
                    lot.amount,
                    lot.earned_at,
                    lot.expires_at,
                )
            )
        written.append(
            WrittenEntry(
                id=entry_id,
                kind=draft.kind,
                posted_at=posted_at,
                actor=item.actor,
                metadata=draft.metadata,
                reverses_entry_id=draft.reverses_entry_id,
                postings=postings,
            )
        )
    announced = [
        announcement(ordinal, EventType.POINTS_EARNED, earned, earned.customer_id, at=now)
        for ordinal, ((item, *_), entry) in enumerate(zip(decided, written, strict=True), start=1)
        if (earned := points_earned_by(item.draft, entry.id, entry.posted_at)) is not None
    ]
    written_iter = iter(written)
    outcomes = [next(written_iter) if result is None else result for result in results]
    remembered = [(*key, *encode_outcome(outcome)) for key, outcome in zip(keys, outcomes, strict=True)] if keys else []
    touched = [a for a in accounts.values() if a.touched]
    await _append(connection, program_id, rows, touched, remembered, announced)
    return outcomes


def _columns(rows: Sequence[tuple[Any, ...]], count: int) -> list[list[Any]]:
    return [[row[index] for row in rows] for index in range(count)]


_APPEND = f"""
WITH new_entries AS (
    INSERT INTO entries (program_id, id, kind, posted_at, actor, reverses_entry_id, metadata)
    SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::timestamptz[], $5::text[], $6::bigint[], $7::jsonb[])
    RETURNING id
), queued AS (
    INSERT INTO seal_queue (program_id, entry_id) SELECT $1, id FROM new_entries
), new_postings AS (
    INSERT INTO postings (program_id, entry_id, line, account_id, unit, amount, balance_after,
                          account_version, posted_at)
    SELECT $1, * FROM unnest($8::bigint[], $9::smallint[], $10::bigint[], $11::text[], $12::bigint[],
                             $13::bigint[], $14::bigint[], $15::timestamptz[])
), moved AS (
    UPDATE accounts AS a SET balance = u.balance, version = u.version, last_posted_at = u.posted
      FROM unnest($16::bigint[], $17::bigint[], $18::bigint[], $19::timestamptz[]) AS u(id, balance, version, posted)
     WHERE a.program_id = $1 AND a.id = ANY($16::bigint[]) AND a.id = u.id
), new_lots AS (
    INSERT INTO lots (program_id, id, entry_id, account_id, remaining, amount, earned_at, expires_at)
    SELECT $1, * FROM unnest($20::bigint[], $21::bigint[], $22::bigint[], $23::bigint[], $24::bigint[],
                             $25::timestamptz[], $26::timestamptz[])
), spent_lots AS (
    UPDATE lots AS l SET remaining = l.remaining - c.amount
      FROM (SELECT id, sum(amount)::bigint AS amount FROM unnest($27::bigint[], $28::bigint[]) AS c(id, amount)
             GROUP BY id) AS c
     WHERE l.program_id = $1 AND l.id = ANY($27::bigint[]) AND l.id = c.id
), allocations AS (
    INSERT INTO lot_allocations (program_id, entry_id, lot_id, amount)
    SELECT $1, entry_id, lot_id, sum(amount) FROM unnest($29::bigint[], $30::bigint[], $31::bigint[])
        AS c(entry_id, lot_id, amount) GROUP BY entry_id, lot_id
), remembered AS (
    INSERT INTO idempotency_keys (program_id, key, fingerprint, status_code, response)
    SELECT $1, * FROM unnest($32::text[], $33::bytea[], $34::int[], $35::bytea[])
), announced AS (  -- events of the entries (by position in $2), at their posting time
    INSERT INTO event_outbox (program_id, id, type, customer_id, payload, occurred_at)
    SELECT $1, e.id, e.type, e.customer_id, e.payload::jsonb, w.posted_at
      FROM {outbox_rows(36)}
      JOIN unnest($4::timestamptz[]) WITH ORDINALITY AS w (posted_at, ordinal) ON w.ordinal = e.ordinal
     ORDER BY e.ordinal
)
SELECT 1
"""


async def _append(
    connection: asyncpg.Connection,
    program_id: str,
    rows: _Rows,
    touched: Sequence[_Account],
    remembered: Sequence[tuple[str, bytes, int, bytes]],
    announced: list[Announcement],
) -> None:
    """Everything a batch writes, in one statement (its key checks run at its end)."""
    new_lot_ids = {row[0] for row in rows.created}
    old_lots = [(lot, amount) for _, lot, amount in rows.consumed if lot not in new_lot_ids]
    await connection.execute(
        _APPEND,
        program_id,
        *_columns(rows.entries, 6),
        *_columns(rows.postings, 8),
        [a.id for a in touched],
        [a.balance for a in touched],
        [a.version for a in touched],
        [a.last_posted_at for a in touched],
        *_columns(rows.created, 7),
        [lot for lot, _ in old_lots],
        [amount for _, amount in old_lots],
        *_columns(rows.consumed, 3),
        *_columns(remembered, 4),
        *announcement_columns(announced),
    )


# --- Credit-only entries: one statement --------------------------------------------------

_CREDIT_PARAMETERS = (
    "$1, $2, $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::integer[], $8::text[], $9::integer[],"
    " $10::smallint[], $11::text[], $12::bigint[], $13::integer[], $14::text[], $15::bytea[], $16::integer[],"
    " $17::bytea[]"
)
# The function answers a claimed batch's used keys first, then the rest: its rows are put
# back in the requests' order (`ord`), which is how the callers pair them with the requests.
_APPEND_CALL = f"SELECT * FROM append_credit_entries({_CREDIT_PARAMETERS})"
_CLAIM_CALL = f"SELECT * FROM append_credit_entries({_CREDIT_PARAMETERS}, true, $18, $19, $20)"
_APPEND_CREDITS = f"{_APPEND_CALL} ORDER BY ord"
_CLAIM_CREDITS = f"{_CLAIM_CALL} ORDER BY ord"
SETTINGS_CHANGED = "LY001"  # SQLSTATE: the program's ledger settings are not the drafts'


def _announcing(call: str, first: int) -> str:
    """`call` (of append_credit_entries) that also appends the announcements given from
    parameter `first` on (`announcement_columns`) for the entries it wrote, each with the
    entry's id and posting time filled in as `entry_id` and `available_from`: only the call
    knows them. A replayed key or a missing account writes no entry and emits nothing."""
    posted = """to_char(w.posted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
    return (
        f"WITH written AS MATERIALIZED ({call}), announced AS ("
        " INSERT INTO event_outbox (program_id, id, type, customer_id, payload, occurred_at)"
        " SELECT $1, e.id, e.type, e.customer_id,"
        f" e.payload::jsonb || jsonb_build_object('entry_id', w.entry_id, 'available_from', {posted}), w.posted_at"
        f" FROM {outbox_rows(first)} JOIN written AS w ON w.ord = e.ordinal AND w.entry_id IS NOT NULL"
        " ORDER BY e.ordinal)"
        " SELECT * FROM written ORDER BY ord"
    )


_APPEND_CREDITS_ANNOUNCING = _announcing(_APPEND_CALL, 18)
_CLAIM_CREDITS_ANNOUNCING = _announcing(_CLAIM_CALL, 21)


def _credit_announcements(items: Sequence[EntryToWrite], now: datetime) -> list[Announcement]:
    """The events of credit-only items, by position; `_announcing` fills in what the write decides."""
    return [
        announcement(ordinal, EventType.POINTS_EARNED, earned, earned.customer_id, at=now)
        for ordinal, item in enumerate(items, start=1)
        if (earned := points_earned_by(item.draft, 0, now)) is not None
    ]


class SettingsChanged(Exception):
    """The program's ledger settings changed since the drafts were made; nothing was written."""


def _credited_only(item: EntryToWrite) -> AccountRef | None:
    """The account a credit-only item credits; None sends it down the general path (which
    also answers a malformed draft with its refusal)."""
    if item.restored or item.reclaimed:
        return None
    try:
        validate_entry(item.draft)
    except DomainError:
        return None
    return credited_only(item.draft)


def is_credit_only(item: EntryToWrite) -> bool:
    """Whether the item is written by the one-statement path (see `credited_only`)."""
    return _credited_only(item) is not None


def _missing(account: AccountRef) -> NotFound:
    """The refusal of an entry whose customer account does not exist (as `_decide` says it)."""
    return NotFound(f"customer {account.customer_id} not found", field="customer_id")


def _credit_arguments(
    items: Sequence[EntryToWrite],
    credited: Sequence[AccountRef | None],
    keys: Sequence[tuple[str, bytes]] | None,
) -> list[Any]:
    """The arrays of append_credit_entries, from $3 to $17 (customer accounts by position)."""
    accounts: dict[AccountRef, int] = {}
    kinds: list[str] = []
    actors: list[str] = []
    metadata: list[str] = []
    expiries: list[datetime | None] = []
    entry_accounts: list[int] = []
    posting_entries: list[int] = []
    posting_lines: list[int] = []
    posting_accounts: list[str] = []
    posting_amounts: list[int] = []
    posting_customers: list[int | None] = []
    for ordinal, (item, account) in enumerate(zip(items, credited, strict=True), start=1):
        assert account is not None, "only credit-only entries take this path"
        draft = item.draft
        position = accounts.setdefault(account, len(accounts) + 1)
        kinds.append(draft.kind)
        actors.append(item.actor)
        metadata.append(msgspec.json.encode(draft.metadata).decode())
        expiries.append(draft.lot_expires_at)
        entry_accounts.append(position)
        for line, posting in enumerate(draft.postings, start=1):
            posting_entries.append(ordinal)
            posting_lines.append(line)
            posting_accounts.append(posting.account.code)
            posting_amounts.append(posting.amount)
            posting_customers.append(position if posting.account.is_customer else None)
    arguments: list[Any] = [kinds, actors, metadata, expiries, entry_accounts, [ref.code for ref in accounts]]
    arguments += [posting_entries, posting_lines, posting_accounts, posting_amounts, posting_customers]
    if not keys:
        return [*arguments, None, None, None, None]
    refusals = [encode_outcome(_missing(account)) for account in credited if account is not None]
    return [
        *arguments,
        [key for key, _ in keys],
        [fingerprint for _, fingerprint in keys],
        [status for status, _ in refusals],
        [body for _, body in refusals],
    ]


_Answer = asyncpg.Record | Mapping[str, Any]  # a row of append_credit_entries (or the same for one entry)


def _credit_outcome(item: EntryToWrite, account: AccountRef | None, row: _Answer) -> WrittenEntry | NotFound:
    """The entry append_credit_entries wrote for item (or the refusal of a missing account)."""
    assert account is not None
    if row["entry_id"] is None:
        return _missing(account)
    draft = item.draft
    return WrittenEntry(
        id=row["entry_id"],
        kind=draft.kind,
        posted_at=row["posted_at"],
        actor=item.actor,
        metadata=draft.metadata,
        reverses_entry_id=None,
        postings=[
            WrittenPosting(line, account_id, posting.account.code, posting.account.unit.value, posting.amount, after)
            for line, (posting, account_id, after) in enumerate(
                zip(draft.postings, row["account_ids"], row["balances_after"], strict=True), start=1
            )
        ],
    )


# --- One credit-only entry of two postings: plain statements, scalar arguments ----------

_APPEND_ONE_CREDIT = (
    "SELECT * FROM append_credit_entry($1::text, $2::timestamptz, $3::text, $4::text, $5::text,"
    " $6::timestamptz, $7::text, $8::smallint, $9::bigint, $10::bigint, $11::text, $12::text, $13::bigint,"
    " $14::text, $15::bytea, $16::integer, $17::bytea, $18::boolean, $19::text, $20::text, $21::integer,"
    " $22::text, $23::text, $24::text, $25::text)"
)


def _one_credit_lines(item: EntryToWrite) -> tuple[int, int] | None:
    """For a credit-only item of one customer posting and one system posting, the lines
    (from 0) of the customer's and the system's; None for any other shape (those take
    append_credit_entries)."""
    postings = item.draft.postings
    if len(postings) != 2:
        return None
    first, second = (posting.account.is_customer for posting in postings)
    if first == second:
        return None
    return (0, 1) if first else (1, 0)


async def _append_one_credit(
    connection: asyncpg.Connection,
    program_id: str,
    item: EntryToWrite,
    now: datetime,
    key: tuple[str, bytes] | None,
    claim: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Write one credit-only item of two postings with `append_credit_entry` (migration
    0019), which writes exactly what `append_credit_entries` writes for it; with `claim`
    (time zone, expiry policy and period: the settings the draft was made with) it also
    claims the key, as `write_credits_once` does.
    Its answer as `append_credit_entries` gives it for the item (one row, postings by line)."""
    lines = _one_credit_lines(item)
    assert lines is not None, "only a credit-only entry of two postings takes this path"
    draft = item.draft
    customer_line, system_line = lines
    customer, system = draft.postings[customer_line], draft.postings[system_line]
    system_id = (await system_account_ids(connection, program_id))[system.account.kind]
    status: int | None = None
    refusal: bytes | None = None
    if key is not None:
        status, refusal = encode_outcome(_missing(customer.account))
    event: tuple[str | None, ...] = (None, None, None, None)
    for announced in _credit_announcements([item], now):  # at most one
        payload = msgspec.json.encode(announced.payload).decode()
        event = (announced.event_id, announced.type.value, announced.customer_id, payload)
    row = await connection.fetchrow(
        _APPEND_ONE_CREDIT,
        program_id,
        now,
        draft.kind,
        item.actor,
        msgspec.json.encode(draft.metadata).decode(),
        draft.lot_expires_at,
        customer.account.code,
        customer_line + 1,
        customer.amount,
        system_id,
        system.account.code,
        system.account.unit.value,
        system.amount,
        None if key is None else key[0],
        None if key is None else key[1],
        status,
        refusal,
        claim is not None,
        *(claim or (None, None, None)),
        *event,
    )
    assert row is not None
    account_ids = [system_id, system_id]
    balances_after: list[int | None] = [None, None]
    account_ids[customer_line] = row["account_id"]
    balances_after[customer_line] = row["balance_after"]
    return {**dict(row), "account_ids": account_ids, "balances_after": balances_after}


async def write_credits_once(
    connection: asyncpg.Connection,
    program_id: str,
    requests: Sequence[tuple[str, bytes, EntryToWrite]],
    *,
    now: datetime,
    time_zone: str,
    expiry: ExpiryRule,
) -> list[WrittenEntry | DomainError]:
    """Write credit-only entries once per idempotency key, in one statement that must be a
    transaction of its own (autocommit): it takes the keys' locks, checks that the
    program's time zone and expiry rule are still those the drafts were made with
    (SettingsChanged otherwise, and nothing is written), answers a key already used with
    its stored outcome (or IdempotencyKeyReused), and writes and remembers the rest.

    `requests` are (key, request fingerprint, item) with distinct keys, every item
    credit-only (`is_credit_only`)."""
    items = [item for _, _, item in requests]
    credited = [_credited_only(item) for item in items]
    if not all(account is not None for account in credited):
        raise ValueError("write_credits_once writes credit-only entries only")
    keys = [(key, fingerprint) for key, fingerprint, _ in requests]
    settings = [time_zone, expiry.policy.value, expiry.period]
    rows: Sequence[_Answer]
    try:
        if len(requests) == 1 and _one_credit_lines(items[0]) is not None:
            rows = [await _append_one_credit(connection, program_id, items[0], now, keys[0], settings)]
        else:
            arguments = [program_id, now, *_credit_arguments(items, credited, keys), *settings]
            announced = _credit_announcements(items, now)
            if announced:
                rows = await connection.fetch(_CLAIM_CREDITS_ANNOUNCING, *arguments, *announcement_columns(announced))
            else:
                rows = await connection.fetch(_CLAIM_CREDITS, *arguments)
    except asyncpg.PostgresError as error:
        if error.sqlstate == SETTINGS_CHANGED:
            raise SettingsChanged(str(error)) from None
        raise
    return [_claimed_outcome(r, a, row) for r, a, row in zip(requests, credited, rows, strict=True)]


def _claimed_outcome(
    request: tuple[str, bytes, EntryToWrite], account: AccountRef | None, row: _Answer
) -> WrittenEntry | DomainError:
    """The outcome of one claimed request: the entry written, or the record under its key."""
    key, fingerprint, item = request
    if row["entry_id"] is not None:
        return _credit_outcome(item, account, row)
    stored: Stored = (bytes(row["fingerprint"]), row["status_code"], bytes(row["response"]))
    return replay(stored, key, fingerprint, WrittenEntry)


async def write_entry(
    connection: asyncpg.Connection,
    program_id: str,
    draft: EntryDraft,
    *,
    actor: str,
    now: datetime,
    restored: Sequence[Slice] = (),
    reclaimed: Collection[int] = (),
) -> WrittenEntry:
    """Append one balanced entry inside the caller's transaction; raise its refusal."""
    item = EntryToWrite(draft, actor, tuple(restored), tuple(reclaimed))
    [result] = await write_entries(connection, program_id, [item], now=now)
    if isinstance(result, DomainError):
        raise result
    return result


async def consumed_slices(connection: asyncpg.Connection, program_id: str, entry_id: int) -> list[Slice]:
    """The lot slices an entry consumed (what a reversal of it gives back)."""
    rows = await connection.fetch(
        "SELECT a.lot_id, a.amount, l.earned_at, l.expires_at FROM lot_allocations a"
        " JOIN lots l ON l.program_id = a.program_id AND l.id = a.lot_id"
        " WHERE a.program_id = $1 AND a.entry_id = $2",
        program_id,
        entry_id,
    )
    return [Slice(r["lot_id"], r["amount"], r["earned_at"], r["expires_at"]) for r in rows]


async def created_lots(
    connection: asyncpg.Connection, program_id: str, customer_id: str, entry_ids: Sequence[int | None]
) -> list[int]:
    """The lots these entries created on the customer's accounts that still hold points, in
    id order (what a reversal, a refund or a hold's resolution takes back first); a None
    entry id is skipped. Read through the customer's open lots (`lots_open`): no index
    leads with the entry, and a lot with nothing left has nothing to take back."""
    rows = await connection.fetch(
        "SELECT id FROM lots WHERE program_id = $1 AND remaining > 0 AND entry_id = ANY($3::bigint[])"
        " AND account_id = ANY(ARRAY(SELECT id FROM accounts WHERE program_id = $1 AND customer_id = $2))"
        " ORDER BY id",
        program_id,
        customer_id,
        [entry_id for entry_id in entry_ids if entry_id is not None],
    )
    return [row["id"] for row in rows]
