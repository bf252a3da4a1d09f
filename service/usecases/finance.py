"""Finance's read-only view of the ledger."""

from __future__ import annotations

import msgspec

from service.db.chain import iter_chain_breaks
from service.db.transaction import transaction
from service.domain.chain import ChainBreak


class ChainReport(msgspec.Struct, frozen=True, kw_only=True):
    valid: bool
    sealed: int
    last_seq: int
    unsealed: int
    first_break: ChainBreak | None = None


async def verify_chain(program_id: str) -> ChainReport:
    """Recompute the program's hash chain and name the first broken entry, if any."""
    async with transaction() as connection:
        await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        first_break: ChainBreak | None = None
        sealed = last_seq = 0
        async for item in iter_chain_breaks(connection, program_id):
            if isinstance(item, ChainBreak):
                first_break = first_break or item
            else:
                sealed, last_seq = item
        unsealed = await connection.fetchval(
            "SELECT count(*) FROM entries e WHERE e.program_id = $1 AND NOT EXISTS"
            " (SELECT 1 FROM entry_seals s WHERE s.program_id = e.program_id AND s.entry_id = e.id)",
            program_id,
        )
    return ChainReport(
        valid=first_break is None, sealed=sealed, last_seq=last_seq, unsealed=unsealed, first_break=first_break
    )
