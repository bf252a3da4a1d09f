"""Versioned earning rules."""

from service.db.migrate import sql_migration

ID = "2026-11-23T14:50:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "earning rule sets"

forwards = sql_migration(ID, "0007_earning_rule_sets.sql")
