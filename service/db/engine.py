"""Resolve the database, migrate it, and run the connection pool."""

from __future__ import annotations

import contextlib

import asyncpg

from service.config import Settings
from service.db.embedded import start_embedded, with_database
from service.db.piccolo_conf import DB

APP_ROLE = "loyalty_app"


async def ensure_database(server_dsn: str, database: str) -> str:
    """Create `database` on the server if missing; return its DSN."""
    connection = await asyncpg.connect(server_dsn)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            # another process starting at the same time may create it first
            with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                await connection.execute(f'CREATE DATABASE "{database}"')
    finally:
        await connection.close()
    return with_database(server_dsn, database)


async def resolve_dsn(settings: Settings) -> str:
    """DATABASE_URL when set; otherwise the embedded server's database (started if needed)."""
    if settings.database_url:
        return settings.database_url
    server_dsn = start_embedded(settings.pgdata)
    return await ensure_database(server_dsn, settings.database_name)


async def app_role_available(dsn: str) -> bool:
    """Whether the connecting user may drop to the app role (no UPDATE/DELETE on the journal)."""
    connection = await asyncpg.connect(dsn)
    try:
        return bool(
            await connection.fetchval(
                "SELECT pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles WHERE rolname = $1",
                APP_ROLE,
            )
        )
    finally:
        await connection.close()


class PooledConnection(asyncpg.Connection):
    """A pooled connection returned as it is: the service keeps no session state (its SETs
    are transaction-scoped, its advisory locks transaction-level), so asyncpg's reset
    statement on every release would be a wasted round trip per transaction."""

    def get_reset_query(self) -> str:
        return ""


async def start_pool(dsn: str, settings: Settings) -> asyncpg.Pool:
    """Point piccolo's engine at dsn and open its pool, connected as the app role."""
    server_settings = {"application_name": "loyalty"}
    if await app_role_available(dsn):
        server_settings["role"] = APP_ROLE
    server_settings["statement_timeout"] = "60s"
    DB.configure(
        {"dsn": dsn, "server_settings": server_settings, "connection_class": PooledConnection},
        settings.pool_acquire_timeout_s,
    )
    await DB.start_connection_pool(
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
    )
    pool = DB.pool
    assert pool is not None
    return pool


async def close_pool() -> None:
    """Close the pool if it is open."""
    if DB.pool is not None:
        await DB.close_connection_pool()
