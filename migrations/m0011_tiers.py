"""Tiers: configuration, customer tiers, grants and history."""

from service.db.migrate import sql_migration

ID = "2026-11-23T18:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "tiers"

forwards = sql_migration(ID, "0011_tiers.sql")
