"""The journal's checks per statement where they can be: a batch pays for each once."""

from service.db.migrate import sql_migration

ID = "2026-12-07T03:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "checks per statement"

forwards = sql_migration(ID, "0021_checks_per_statement.sql")
