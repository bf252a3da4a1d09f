"""The work items of the scheduled jobs that keep failing, each with its back-off."""

from service.db.migrate import sql_migration

ID = "2026-12-09T02:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "job failures"

forwards = sql_migration(ID, "0025_job_failures.sql")
