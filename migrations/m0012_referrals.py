"""Referrals: settings, codes, referrals, their rewards, and customer fingerprints."""

from service.db.migrate import sql_migration

ID = "2026-11-23T19:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "referrals"

forwards = sql_migration(ID, "0012_referrals.sql")
