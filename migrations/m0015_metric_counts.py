"""Metrics at scale: activity spells per customer and sharded counts of customers per day,
cohort month and value, so retention, cohorts and RFM read counts instead of customers."""

from service.db.migrate import sql_migration

ID = "2026-11-24T12:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "metric counts"

forwards = sql_migration(ID, "0015_metric_counts.sql")
