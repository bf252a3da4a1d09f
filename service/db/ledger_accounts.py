"""Ledger accounts: opened for each customer at enrolment."""

from __future__ import annotations

import asyncpg


async def open_customer_accounts(connection: asyncpg.Connection, program_id: str, customer_id: str) -> None:
    """Placeholder replaced by the ledger migration."""
    return None
