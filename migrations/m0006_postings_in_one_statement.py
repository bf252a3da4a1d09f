"""An entry's postings are written in one statement and never added to later."""

from service.db.migrate import sql_migration

ID = "2026-11-23T14:45:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "postings written once per entry"

forwards = sql_migration(ID, "0006_postings_in_one_statement.sql")
