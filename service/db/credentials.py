"""The rows that authenticate a caller: an API key's hash and state, a program's token secret,
and what a customer token rests on (its key and its customer)."""

from __future__ import annotations

from datetime import datetime

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


async def token_standing(
    connection: asyncpg.Connection, program_id: str, customer_id: str, key_id: str
) -> asyncpg.Record:
    """For a customer token naming its key: customer_known, and issuer_scope and issuer_revoked
    of that key (NULL and false: no such key in the program). Always one row."""
    row: asyncpg.Record | None = await connection.fetchrow(
        "SELECT EXISTS (SELECT FROM customers WHERE program_id = $1 AND id = $2) AS customer_known,"
        " k.scope AS issuer_scope, k.revoked_at IS NOT NULL AS issuer_revoked"
        " FROM (SELECT) AS one LEFT JOIN api_keys AS k ON k.program_id = $1 AND k.id = $3",
        program_id,
        customer_id,
        key_id,
    )
    assert row is not None
    return row


async def unattributed_token_standing(
    connection: asyncpg.Connection, program_id: str, customer_id: str, issued_no_earlier_than: datetime
) -> asyncpg.Record:
    """For a customer token that names no key: customer_known, and issuer_revoked, whether a
    checkout key of the program was revoked at or after the earliest the token can have been
    issued (issuer_scope is always 'checkout', the only scope that issues tokens)."""
    row: asyncpg.Record | None = await connection.fetchrow(
        "SELECT EXISTS (SELECT FROM customers WHERE program_id = $1 AND id = $2) AS customer_known,"
        " 'checkout' AS issuer_scope,"
        " EXISTS (SELECT FROM api_keys WHERE program_id = $1 AND scope = 'checkout' AND revoked_at >= $3)"
        " AS issuer_revoked",
        program_id,
        customer_id,
        issued_no_earlier_than,
    )
    assert row is not None
    return row
