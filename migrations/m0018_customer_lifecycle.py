"""The lifecycle rollup: per customer, the last order, the order count and the single
category, with indexes of the customers due a win-back or cross-sell event."""

from service.db.migrate import sql_migration

ID = "2026-11-25T10:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "customer lifecycle rollup"

forwards = sql_migration(ID, "0018_customer_lifecycle.sql")
