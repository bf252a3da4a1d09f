"""Orders, refunds, the return window and policy, and the customer's `owed` account."""

from service.db.migrate import sql_migration

ID = "2026-11-23T16:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "orders and refunds"

forwards = sql_migration(ID, "0008_orders.sql")
