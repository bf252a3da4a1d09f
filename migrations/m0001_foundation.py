"""Programs, shops, API keys, customers and idempotency keys."""

from service.db.migrate import sql_migration

ID = "2026-11-23T13:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "programs, shops, api keys, customers, idempotency keys"

forwards = sql_migration(ID, "0001_foundation.sql")
