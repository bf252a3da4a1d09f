"""Credit-only entries (grants) written, with their idempotency records, in one statement."""

from service.db.migrate import sql_migration

ID = "2026-11-24T09:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "credit-only entries in one statement"

forwards = sql_migration(ID, "0010_credit_entries_in_one_statement.sql")
