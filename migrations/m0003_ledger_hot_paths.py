"""No shared row locks on the write path: hot foreign keys become never-delete triggers."""

from service.db.migrate import sql_migration

ID = "2026-11-23T13:50:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "ledger hot paths"

forwards = sql_migration(ID, "0003_ledger_hot_paths.sql")
