"""The double-entry ledger: accounts, entries, postings, lots, holds and the hash chain."""

from service.db.migrate import sql_migration

ID = "2026-11-23T13:10:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "double-entry ledger"

forwards = sql_migration(ID, "0002_ledger.sql")
