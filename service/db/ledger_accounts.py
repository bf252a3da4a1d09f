"""Ledger accounts: per customer at enrolment, per program when the program is created."""

from __future__ import annotations

import asyncpg

from service.domain.errors import NotFound
from service.domain.ledger import CHART, CUSTOMER_KINDS, SYSTEM_KINDS, AccountKind, AccountRef

_system_ids: dict[tuple[str, AccountKind], int] = {}


async def open_customer_accounts(connection: asyncpg.Connection, program_id: str, customer_id: str) -> None:
    """Open every per-customer account (balance 0) for a new customer."""
    refs = [AccountRef(kind, customer_id) for kind in CUSTOMER_KINDS]
    await connection.execute(
        "INSERT INTO accounts (program_id, code, customer_id, kind, unit, normal_side, balance)"
        " SELECT $1, code, $2, kind, unit, side, 0"
        " FROM unnest($3::text[], $4::text[], $5::text[], $6::text[]) AS a(code, kind, unit, side)"
        " ON CONFLICT (program_id, code) DO NOTHING",
        program_id,
        customer_id,
        [ref.code for ref in refs],
        [ref.kind.value for ref in refs],
        [CHART[ref.kind].unit.value for ref in refs],
        [CHART[ref.kind].normal_side.value for ref in refs],
    )


async def open_system_accounts(connection: asyncpg.Connection, program_id: str) -> None:
    """Open the program's system accounts (in the transaction that creates the program)."""
    refs = [AccountRef(kind) for kind in SYSTEM_KINDS]
    await connection.execute(
        "INSERT INTO accounts (program_id, code, kind, unit, normal_side)"
        " SELECT $1, code, kind, unit, side"
        " FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS a(code, kind, unit, side)"
        " ON CONFLICT (program_id, code) DO NOTHING",
        program_id,
        [ref.code for ref in refs],
        [ref.kind.value for ref in refs],
        [CHART[ref.kind].unit.value for ref in refs],
        [CHART[ref.kind].normal_side.value for ref in refs],
    )


async def system_account_ids(connection: asyncpg.Connection, program_id: str) -> dict[AccountKind, int]:
    """Ids of the program's system accounts. They are committed with the program and never
    change or go away, so they are read once per process and kept."""
    cached = {kind: _system_ids.get((program_id, kind)) for kind in SYSTEM_KINDS}
    if all(account_id is not None for account_id in cached.values()):
        return {kind: account_id for kind, account_id in cached.items() if account_id is not None}
    rows = await connection.fetch(
        "SELECT id, kind FROM accounts WHERE program_id = $1 AND customer_id IS NULL", program_id
    )
    found = {AccountKind(row["kind"]): row["id"] for row in rows}
    missing = [kind.value for kind in SYSTEM_KINDS if kind not in found]
    if missing:
        raise NotFound(f"program {program_id} has no system accounts {missing}")
    for kind, account_id in found.items():
        _system_ids[(program_id, kind)] = account_id
    return found
