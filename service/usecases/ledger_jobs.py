"""Jobs that age the ledger: void expired holds, expire points, seal the hash chain.

Each is idempotent and safe in several workers at once: work items are re-checked under
their own row locks, and the sealer takes a per-program advisory lock.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import asyncpg

from service.db import job_failures
from service.db.chain import seal_batch
from service.db.ledger import write_entry
from service.db.transaction import in_transaction
from service.domain.clock import Clock
from service.domain.errors import HoldNotOpen
from service.domain.ledger import AccountKind, customer_account, system_account, transfer
from service.usecases.ledger import resolve_hold
from service.usecases.lifecycle import emit_points_expired

JOB_ACTOR = "job:{}"
log = logging.getLogger("loyalty.jobs")


EXPIRE_HOLDS = "expire-holds"
EXPIRE_POINTS = "expire-points"


async def expire_holds(program_id: str, clock: Clock, batch: int = 500) -> int:
    """Void every open hold past its expiry; returns how many this run resolved.

    Each hold in a transaction of its own: one that cannot be expired is logged and recorded
    (`job_failures`), left out of the batches until its retry, and the others go on."""
    now = clock.now()

    async def due(connection: asyncpg.Connection) -> list[str]:
        rows = await connection.fetch(
            "SELECT id FROM holds WHERE program_id = $1 AND status = 'open' AND expires_at <= $2"
            f" AND {job_failures.not_waiting('$4', '$2', 'holds.id')}"
            " ORDER BY expires_at LIMIT $3",
            program_id,
            now,
            batch,
            EXPIRE_HOLDS,
        )
        return [row["id"] for row in rows]

    def expire(hold_id: str) -> Callable[[asyncpg.Connection], Awaitable[bool]]:
        async def work(connection: asyncpg.Connection) -> bool:
            try:
                await resolve_hold(connection, program_id, hold_id, 0, "expired", JOB_ACTOR.format(EXPIRE_HOLDS), now)
            except HoldNotOpen:
                return False  # captured or voided meanwhile, or another worker got there first
            return True

        return work

    pending = "EXISTS (SELECT FROM holds h WHERE h.program_id = $1 AND h.id = f.item AND h.status = 'open')"
    return sum(await job_failures.run_items(program_id, EXPIRE_HOLDS, now, due, pending, expire))


async def expire_points(program_id: str, clock: Clock) -> int:
    """Move the unspent rest of expired lots to `expired`, one entry per customer.

    Each customer in a transaction of its own: one whose points cannot be expired is logged
    and recorded (`job_failures`), left out until its retry, and the others go on."""
    now = clock.now()

    async def due(connection: asyncpg.Connection) -> list[str]:
        rows = await connection.fetch(
            "SELECT DISTINCT a.customer_id FROM lots l"
            " JOIN accounts a ON a.program_id = l.program_id AND a.id = l.account_id"
            " WHERE l.program_id = $1 AND l.remaining > 0 AND l.expires_at <= $2 AND a.kind = 'available'"
            f" AND {job_failures.not_waiting('$3', '$2', 'a.customer_id')}",
            program_id,
            now,
            EXPIRE_POINTS,
        )
        return [row["customer_id"] for row in rows]

    def expire(customer_id: str) -> Callable[[asyncpg.Connection], Awaitable[bool]]:
        async def work(connection: asyncpg.Connection) -> bool:
            available = customer_account(customer_id, AccountKind.AVAILABLE)
            await connection.execute(
                "SELECT 1 FROM accounts WHERE program_id = $1 AND code = $2 FOR NO KEY UPDATE",
                program_id,
                available.code,
            )
            amount = await connection.fetchval(
                "SELECT coalesce(sum(l.remaining), 0)::bigint FROM lots l"
                " JOIN accounts a ON a.program_id = l.program_id AND a.id = l.account_id"
                " WHERE l.program_id = $1 AND a.code = $2 AND l.remaining > 0 AND l.expires_at <= $3",
                program_id,
                available.code,
                now,
            )
            if not amount:
                return False  # another worker expired them already
            draft = transfer(
                available,
                system_account(AccountKind.EXPIRED),
                amount,
                kind="expiry",
                metadata={"reason": "points expired", "as_of": now.isoformat()},
            )
            written = await write_entry(connection, program_id, draft, actor=JOB_ACTOR.format(EXPIRE_POINTS), now=now)
            await emit_points_expired(connection, program_id, customer_id, amount, written.id, written.posted_at)
            return True

        return work

    pending = (
        "EXISTS (SELECT FROM lots l JOIN accounts a ON a.program_id = l.program_id AND a.id = l.account_id"
        " WHERE l.program_id = $1 AND a.customer_id = f.item AND a.kind = 'available' AND l.remaining > 0"
        " AND l.expires_at <= $3)"
    )
    return sum(await job_failures.run_items(program_id, EXPIRE_POINTS, now, due, pending, expire, now))


class SealingStuck(Exception):
    """The program's chain cannot go past an entry: it and every entry after it stay unsealed."""

    def __init__(self, program_id: str, entry_id: int, reason: str, sealed: int) -> None:
        super().__init__(
            f"sealing of program {program_id} is stuck at entry {entry_id}: {reason};"
            f" it and the entries after it stay unsealed until it is mended"
        )
        self.program_id, self.entry_id, self.reason, self.sealed = program_id, entry_id, reason, sealed


async def seal_chain(program_id: str, batch: int = 1000) -> int:
    """Append queued entries to the program's hash chain; returns how many were sealed.

    Each batch starts above the previous one's last id, so it does not walk again over the
    queue rows just deleted (dead until vacuumed, and kept while any older snapshot lives);
    an entry with a lower id that commits meanwhile is sealed by the next run.

    The chain may not skip an entry: one that cannot be sealed stops the program's sealing
    there (what comes before it is sealed) and raises `SealingStuck`, every run, until it is
    mended, so that the job reports it as failed rather than leaving the rest silently unsealed."""
    total = after = 0
    while True:
        sealed = await in_transaction(partial(seal_batch, program_id=program_id, limit=batch, after=after))
        total += len(sealed.ids)
        if sealed.stuck is not None:
            raise SealingStuck(program_id, sealed.stuck.entry_id, sealed.stuck.reason, total)
        if len(sealed.ids) < batch:
            return total
        after = sealed.ids[-1]
