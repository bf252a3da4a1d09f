"""A webhook endpoint keeps its previous signing secret for a grace period after a rotation."""

from service.db.migrate import sql_migration

ID = "2026-11-24T14:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "webhook secret rotation"

forwards = sql_migration(ID, "0017_webhook_secret_rotation.sql")
