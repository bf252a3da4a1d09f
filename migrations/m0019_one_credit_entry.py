"""One credit-only entry (a grant) written by plain statements with scalar arguments,
instead of the batch-shaped statement of append_credit_entries."""

from service.db.migrate import sql_migration

ID = "2026-11-26T09:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "one credit entry in plain statements"

forwards = sql_migration(ID, "0019_one_credit_entry.sql")
