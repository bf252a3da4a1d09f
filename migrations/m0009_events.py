"""Lifecycle events: the outbox, the event log with its feed sequence, webhook endpoints and deliveries."""

from service.db.migrate import sql_migration

ID = "2026-11-23T16:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "events and webhooks"

forwards = sql_migration(ID, "0009_events.sql")
