"""Tier downgrade warnings and churn-risk red events read only what is due."""

from service.db.migrate import sql_migration

ID = "2026-12-15T01:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "due only rounds"

forwards = sql_migration(ID, "0028_due_only_rounds.sql")
