"""Refunds record what of the redeemed points they gave back paid off a debt in `owed`."""

from service.db.migrate import sql_migration

ID = "2026-12-08T01:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "refund return settled"

forwards = sql_migration(ID, "0023_refund_return_settled.sql")
