"""Orders paid with a captured hold: the points they redeemed go back on refunds."""

from service.db.migrate import sql_migration

ID = "2026-12-07T04:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "order redemptions"

forwards = sql_migration(ID, "0022_order_redemptions.sql")
