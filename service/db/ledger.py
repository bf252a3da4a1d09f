"""Writing entries: lock the touched customer balances (one statement, ordered by id),
check, and append entry, postings, lot movements and the seal-queue row."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from service.db.ledger_accounts import system_account_ids
from service.domain.errors import NotFound
from service.domain.ledger import (
    AccountKind,
    AccountRef,
    EntryDraft,
    OpenLot,
    Slice,
    check_balances,
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


class _Locked(msgspec.Struct):
    id: int
    balance: int
    version: int
    last_posted_at: datetime | None


async def _lock_customer_accounts(
    connection: asyncpg.Connection, program_id: str, refs: list[AccountRef]
) -> dict[AccountRef, _Locked]:
    by_code = {ref.code: ref for ref in refs}
    rows = await connection.fetch(
        "SELECT id, code, balance, version, last_posted_at FROM accounts"
        " WHERE program_id = $1 AND code = ANY($2::text[]) ORDER BY id FOR NO KEY UPDATE",
        program_id,
        list(by_code),
    )
    locked = {
        by_code[row["code"]]: _Locked(row["id"], row["balance"], row["version"], row["last_posted_at"])
        for row in rows
    }
    missing = [ref for ref in refs if ref not in locked]
    if missing:
        raise NotFound(f"customer {missing[0].customer_id} not found", field="customer_id")
    return locked


async def _open_lots(
    connection: asyncpg.Connection, program_id: str, accounts: dict[AccountRef, int]
) -> dict[AccountRef, list[OpenLot]]:
    if not accounts:
        return {}
    by_id = {account_id: ref for ref, account_id in accounts.items()}
    rows = await connection.fetch(
        "SELECT id, account_id, remaining, earned_at, expires_at FROM lots"
        " WHERE program_id = $1 AND account_id = ANY($2::bigint[]) AND remaining > 0",
        program_id,
        list(by_id),
    )
    lots: dict[AccountRef, list[OpenLot]] = {ref: [] for ref in accounts}
    for row in rows:
        lots[by_id[row["account_id"]]].append(
            OpenLot(row["id"], row["remaining"], row["earned_at"], row["expires_at"])
        )
    return lots


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
    """Append one balanced entry inside the caller's transaction; refuse overdrafts.

    `restored` and `reclaimed` are for reversals: the slices the original consumed (given
    back) and the lots it created (taken back before any other)."""
    validate_entry(draft)
    net = net_by_account(draft.postings)
    customer_refs = sorted((ref for ref in net if ref.is_customer), key=lambda ref: ref.code)
    locked = await _lock_customer_accounts(connection, program_id, customer_refs)
    balances_after = check_balances(draft, {ref: state.balance for ref, state in locked.items()})

    system_ids = await system_account_ids(connection, program_id)
    account_ids: dict[AccountRef, int] = {ref: state.id for ref, state in locked.items()}
    for ref in net:
        if not ref.is_customer:
            account_ids[ref] = system_ids[ref.kind]

    debited = {ref: account_ids[ref] for ref, change in net.items() if ref.is_customer and change < 0}
    open_lots = await _open_lots(connection, program_id, debited)
    plan = plan_lots(draft, open_lots, now, restored, reclaimed)

    posted_at = max([now, *(s.last_posted_at for s in locked.values() if s.last_posted_at)])
    entry_id: int = await connection.fetchval(
        "INSERT INTO entries (program_id, kind, posted_at, actor, reverses_entry_id, metadata)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        program_id,
        draft.kind,
        posted_at,
        actor,
        draft.reverses_entry_id,
        msgspec.json.encode(draft.metadata).decode(),
    )

    running = {ref: (state.balance, state.version) for ref, state in locked.items()}
    postings: list[WrittenPosting] = []
    versions: list[int | None] = []
    for line, posting in enumerate(draft.postings, start=1):
        balance_after: int | None = None
        version: int | None = None
        if posting.account.is_customer:
            balance, version = running[posting.account]
            balance_after, version = balance + posting.amount, version + 1
            running[posting.account] = (balance_after, version)
        versions.append(version)
        postings.append(
            WrittenPosting(
                line=line,
                account_id=account_ids[posting.account],
                account=posting.account.code,
                unit=posting.account.unit.value,
                amount=posting.amount,
                balance_after=balance_after,
            )
        )
    await connection.execute(
        "INSERT INTO postings (program_id, entry_id, line, account_id, unit, amount, balance_after,"
        " account_version, posted_at)"
        " SELECT $1, $2, line, account_id, unit, amount, balance_after, version, $3"
        " FROM unnest($4::smallint[], $5::bigint[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[])"
        " AS p(line, account_id, unit, amount, balance_after, version)",
        program_id,
        entry_id,
        posted_at,
        [p.line for p in postings],
        [p.account_id for p in postings],
        [p.unit for p in postings],
        [p.amount for p in postings],
        [p.balance_after for p in postings],
        versions,
    )
    if locked:
        refs = list(locked)
        await connection.execute(
            "UPDATE accounts AS a SET balance = u.balance, version = u.version, last_posted_at = $2"
            " FROM unnest($3::bigint[], $4::bigint[], $5::bigint[]) AS u(id, balance, version)"
            " WHERE a.program_id = $1 AND a.id = u.id",
            program_id,
            posted_at,
            [locked[ref].id for ref in refs],
            [balances_after.get(ref, locked[ref].balance) for ref in refs],
            [running[ref][1] for ref in refs],
        )
    await _record_lots(connection, program_id, entry_id, plan.consumed, plan.created, account_ids)
    await connection.execute(
        "INSERT INTO seal_queue (program_id, entry_id) VALUES ($1, $2)", program_id, entry_id
    )
    return WrittenEntry(
        id=entry_id,
        kind=draft.kind,
        posted_at=posted_at,
        actor=actor,
        metadata=draft.metadata,
        reverses_entry_id=draft.reverses_entry_id,
        postings=postings,
    )


async def _record_lots(
    connection: asyncpg.Connection,
    program_id: str,
    entry_id: int,
    consumed: Sequence[Slice],
    created: Sequence[Any],
    account_ids: dict[AccountRef, int],
) -> None:
    if consumed:
        await connection.execute(
            "UPDATE lots AS l SET remaining = l.remaining - c.amount"
            " FROM unnest($2::bigint[], $3::bigint[]) AS c(id, amount)"
            " WHERE l.program_id = $1 AND l.id = c.id",
            program_id,
            [s.lot_id for s in consumed],
            [s.amount for s in consumed],
        )
        await connection.execute(
            "INSERT INTO lot_allocations (program_id, entry_id, lot_id, amount)"
            " SELECT $1, $2, id, sum(amount) FROM unnest($3::bigint[], $4::bigint[]) AS c(id, amount)"
            " GROUP BY id",
            program_id,
            entry_id,
            [s.lot_id for s in consumed],
            [s.amount for s in consumed],
        )
    if created:
        await connection.execute(
            "INSERT INTO lots (program_id, account_id, entry_id, amount, remaining, earned_at, expires_at)"
            " SELECT $1, account_id, $2, amount, amount, earned_at, expires_at"
            " FROM unnest($3::bigint[], $4::bigint[], $5::timestamptz[], $6::timestamptz[])"
            " AS n(account_id, amount, earned_at, expires_at)",
            program_id,
            entry_id,
            [account_ids[lot.account] for lot in created],
            [lot.amount for lot in created],
            [lot.earned_at for lot in created],
            [lot.expires_at for lot in created],
        )


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


async def created_lots(connection: asyncpg.Connection, program_id: str, entry_id: int) -> list[int]:
    """The lots an entry created (what a reversal of it takes back first)."""
    rows = await connection.fetch(
        "SELECT id FROM lots WHERE program_id = $1 AND entry_id = $2", program_id, entry_id
    )
    return [row["id"] for row in rows]


__all__ = ["AccountKind", "WrittenEntry", "consumed_slices", "created_lots", "write_entry"]
