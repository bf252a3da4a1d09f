"""Lock idempotency keys and read what a batch needs in one round trip."""

from service.db.migrate import sql_migration

ID = "2026-11-23T14:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "lock idempotency keys function"

forwards = sql_migration(ID, "0005_lock_keys_function.sql")
