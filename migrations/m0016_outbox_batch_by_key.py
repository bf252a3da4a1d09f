"""The event publisher takes its batch from the outbox by key, whatever the statistics say."""

from service.db.migrate import sql_migration

ID = "2026-11-24T13:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "event outbox batches by key"

forwards = sql_migration(ID, "0016_outbox_batch_by_key.sql")
