"""The sealer takes its batch from the queue by key, whatever the statistics say."""

from service.db.migrate import sql_migration

ID = "2026-11-23T22:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "seal queue batches by key"

forwards = sql_migration(ID, "0014_seal_queue_by_key.sql")
