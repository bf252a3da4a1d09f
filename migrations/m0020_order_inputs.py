"""One call for everything placing an order reads before it computes the award."""

from service.db.migrate import sql_migration

ID = "2026-12-07T01:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "order inputs in one call"

forwards = sql_migration(ID, "0020_order_inputs.sql")
