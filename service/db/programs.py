"""Program rows read by the jobs that go through every program."""

from __future__ import annotations

import asyncpg


async def program_ids(connection: asyncpg.Connection) -> list[str]:
    """Every program's id, in id order."""
    return [row["id"] for row in await connection.fetch("SELECT id FROM programs ORDER BY id")]
