"""The rows that authenticate a caller: an API key's hash and state, a program's token secret."""

from __future__ import annotations

import asyncpg


async def api_key(connection: asyncpg.Connection, program_id: str, key_id: str) -> asyncpg.Record | None:
    """scope, shop_id, secret_hash and revoked_at of a key, or None."""
    row: asyncpg.Record | None = await connection.fetchrow(
        "SELECT scope, shop_id, secret_hash, revoked_at FROM api_keys WHERE program_id = $1 AND id = $2",
        program_id,
        key_id,
    )
    return row


async def token_secret(connection: asyncpg.Connection, program_id: str) -> bytes | None:
    """The secret that signs the program's customer tokens, or None if there is no such program."""
    secret: bytes | None = await connection.fetchval("SELECT token_secret FROM programs WHERE id = $1", program_id)
    return secret
