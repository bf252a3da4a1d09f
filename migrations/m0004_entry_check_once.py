"""Check each entry's balance once at COMMIT rather than once per posting row."""

from service.db.migrate import sql_migration

ID = "2026-11-23T14:10:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "entry balance check once per entry"

forwards = sql_migration(ID, "0004_entry_check_once.sql")
