"""The journal's statement checks probe each key without an aggregate."""

from service.db.migrate import sql_migration

ID = "2026-12-09T04:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "checks probe by key"

forwards = sql_migration(ID, "0027_checks_probe_by_key.sql")
