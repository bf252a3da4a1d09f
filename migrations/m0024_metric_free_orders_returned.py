"""An order of net 0 whose every item came back is fully refunded: not a purchase in the metrics."""

from service.db.migrate import sql_migration

ID = "2026-12-09T01:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "metric free orders returned"

forwards = sql_migration(ID, "0024_metric_free_orders_returned.sql")
