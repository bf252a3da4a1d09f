"""Piccolo configuration: the engine every table is bound to.

The DSN is only known once the database is resolved (embedded or DATABASE_URL), so the
engine is created unconfigured and `service.db.engine.configure` fills it in.
"""

from __future__ import annotations

from typing import Any

from piccolo.conf.apps import AppRegistry
from piccolo.engine.postgres import PostgresEngine


class DeferredPostgresEngine(PostgresEngine):  # type: ignore[misc]
    """A PostgresEngine that does not connect at import time."""

    async def check_version(self) -> None:
        return None

    async def prep_database(self) -> None:
        return None

    def configure(self, config: dict[str, Any]) -> None:
        """Point the engine at a database (before its pool is started)."""
        self.config = config


DB = DeferredPostgresEngine(config={})

APP_REGISTRY = AppRegistry(apps=["service.db.piccolo_app"])
