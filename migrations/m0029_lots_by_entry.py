"""An index of lots by the entry that created them, for an entry's trace in the finance API."""

from service.db.migrate import sql_migration

ID = "2026-12-20T01:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "lots by entry"

forwards = sql_migration(ID, "0029_lots_by_entry.sql")
