"""Piccolo configuration: the engine every table is bound to.

The DSN is only known once the database is resolved (embedded or DATABASE_URL), so the
engine is created unconfigured and `DB.configure` fills it in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import asyncpg
from piccolo.conf.apps import AppRegistry
from piccolo.engine.postgres import PostgresEngine, PostgresTransaction


class DeferredPostgresEngine(PostgresEngine):
    """A PostgresEngine that does not connect at import time."""

    async def check_version(self) -> None:
        return None

    async def prep_database(self) -> None:
        return None

    acquire_timeout: float | None = None

    def configure(self, config: dict[str, Any], acquire_timeout: float | None = None) -> None:
        """Point the engine at a database (before its pool is started)."""
        self.config = config
        self.acquire_timeout = acquire_timeout

    def transaction(self, allow_nested: bool = True) -> PostgresTransaction:
        return BoundedWaitTransaction(engine=self, allow_nested=allow_nested)

    async def _run_in_pool(self, query: str, args: Sequence[Any] | None = None) -> Any:
        """A piccolo query outside a transaction waits for a pooled connection at most the
        acquire timeout too."""
        if not self.pool:
            raise ValueError("A pool isn't currently running.")
        async with self.pool.acquire(timeout=self.acquire_timeout) as connection:
            return await connection.fetch(query, *(args or []))


class BoundedWaitTransaction(PostgresTransaction):
    """Waits at most the engine's acquire timeout for a pooled connection, so an exhausted
    pool fails fast (TimeoutError, answered with 503) instead of hanging."""

    async def __aenter__(self) -> PostgresTransaction:
        """Begin; if BEGIN fails (or the task is cancelled) the connection goes back to the pool."""
        if self._parent is not None:
            return self._parent
        self.connection = await self.get_connection()
        try:
            self.transaction = self.connection.transaction()
            await self.begin()  # type: ignore[no-untyped-call]
        except BaseException:
            if self.engine.pool:
                await self.engine.pool.release(self.connection)
            else:
                await self.connection.close()
            raise
        self.context = self.engine.current_transaction.set(self)
        return self

    async def __aexit__(self, exception_type: Any, exception: Any, traceback: Any) -> bool:
        """Release the connection even when COMMIT itself fails (a deferred constraint, a
        serialization failure): piccolo's own exit skips the release then, leaking it."""
        if self._parent:
            return exception is None
        try:
            if exception:
                if not self._rolled_back:
                    # on a connection the server dropped, ROLLBACK fails too; the error that
                    # ended the transaction is the one to report (a lost database is a 503)
                    with contextlib.suppress(asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError):
                        await self.rollback()  # type: ignore[no-untyped-call]
            elif not self._committed and not self._rolled_back:
                await self.commit()  # type: ignore[no-untyped-call]
        finally:
            if self.engine.pool:
                await self.engine.pool.release(self.connection)
            else:
                await self.connection.close()
            self.engine.current_transaction.reset(self.context)
        return exception is None

    async def get_connection(self) -> Any:
        engine = self.engine
        assert isinstance(engine, DeferredPostgresEngine)
        if engine.pool:
            return await engine.pool.acquire(timeout=engine.acquire_timeout)
        return await engine.get_new_connection()


DB = DeferredPostgresEngine(config={})

APP_REGISTRY = AppRegistry(apps=["service.db.piccolo_app"])
