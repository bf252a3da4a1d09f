"""Transactions: one connection per unit of work, retried on deadlock or serialization failure."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar, cast

import asyncpg

from service.db.piccolo_conf import DB

T = TypeVar("T")

RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
# Failures of the database rather than of a request: no connection within the pool's acquire
# timeout (TimeoutError, an OSError), a server gone, restarting, refusing connections or out
# of resources. No request caused them, so none is to blame, and each may be sent again.
UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InsufficientResourcesError,
    OSError,
)
MAX_ATTEMPTS = 8


@asynccontextmanager
async def transaction() -> AsyncIterator[asyncpg.Connection]:
    """A database transaction; piccolo queries inside it join it."""
    async with DB.transaction() as tx:
        connection: asyncpg.Connection = tx.connection
        yield connection


@asynccontextmanager
async def snapshot() -> AsyncIterator[asyncpg.Connection]:
    """One read-only, repeatable-read transaction, so every figure read in it comes from one
    instant."""
    async with transaction() as connection:
        await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield connection


@asynccontextmanager
async def autocommit() -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection outside any transaction: each statement on it is a transaction
    of its own (one round trip where BEGIN, statement and COMMIT take three). Waits for a
    connection no longer than a transaction does."""
    pool = DB.pool
    if pool is None:
        connection: asyncpg.Connection = await DB.get_new_connection()
        try:
            yield connection
        finally:
            await connection.close()
        return
    pooled = await pool.acquire(timeout=DB.acquire_timeout)
    try:
        yield cast(asyncpg.Connection, pooled)
    finally:
        await pool.release(pooled)


async def with_retry(work: Callable[[], Awaitable[T]]) -> T:
    """Run work (which opens its own transaction) again after a deadlock or serialization failure."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return await work()
        except RETRYABLE:
            if attempt == MAX_ATTEMPTS:
                raise
            await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))  # noqa: S311 - jitter
    raise AssertionError("unreachable")


async def in_transaction(work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run work in one transaction, retried as a whole on deadlock."""

    async def attempt() -> T:
        async with transaction() as connection:
            return await work(connection)

    return await with_retry(attempt)
