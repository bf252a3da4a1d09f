"""An index of the pending webhook deliveries whose event could not be read, for their counts."""

from service.db.migrate import sql_migration

ID = "2026-12-09T03:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "unreadable deliveries index"

forwards = sql_migration(ID, "0026_unreadable_deliveries.sql")
