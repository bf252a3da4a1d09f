"""Metrics: per-customer daily and monthly rollups of purchases, customer summaries,
customer signals, metric settings and cached lifetime-value fits."""

from service.db.migrate import sql_migration

ID = "2026-11-23T21:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "metrics rollups"

forwards = sql_migration(ID, "0013_metrics.sql")
