"""Run the piccolo migrations of the top-level migrations/ folder."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.apps.migrations.commands.forwards import ForwardsMigrationManager

from service.db.piccolo_conf import DB

SQL_FOLDER = Path(__file__).resolve().parent.parent.parent / "migrations" / "sql"


def sql_migration(migration_id: str, filename: str) -> Callable[[], Awaitable[MigrationManager]]:
    """Build a piccolo migration that runs one SQL script inside the migration's transaction."""
    script = (SQL_FOLDER / filename).read_text()

    async def run_script() -> None:
        transaction = DB.current_transaction.get()
        assert transaction is not None, "piccolo runs migrations in a transaction"
        await transaction.connection.execute(script)

    async def forwards() -> MigrationManager:
        manager = MigrationManager(migration_id=migration_id, app_name="loyalty")
        manager.add_raw(run_script)
        return manager

    return forwards


MIGRATION_LOCK = 7_202_611_230  # pg advisory lock key: one migrator at a time


async def migrate() -> None:
    """Apply every migration that has not run yet; concurrent starts wait for each other."""
    import contextlib
    import io

    import asyncpg

    lock = await asyncpg.connect(DB.config["dsn"])
    try:
        await lock.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):  # piccolo prints progress with emoji
            result = await ForwardsMigrationManager(app_name="loyalty").run()
    finally:
        await lock.close()  # closing the session releases the lock
    if not result.success:
        raise RuntimeError(f"migrations failed: {result.message}\n{quiet.getvalue()}")
