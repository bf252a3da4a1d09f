"""An index of the orders placed ahead of the service's clock, which a new rules version may not precede."""

from service.db.migrate import sql_migration

ID = "2026-12-21T01:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "orders ahead of the clock"

forwards = sql_migration(ID, "0030_orders_ahead_of_the_clock.sql")
