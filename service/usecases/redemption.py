"""Redemption quotes at checkout: what the customer's available points can pay for."""

from __future__ import annotations

from service.db.transaction import autocommit
from service.domain.errors import NotFound
from service.domain.redemption import RedemptionQuote, quote_redemption


async def quote(
    program_id: str, customer_id: str, discount_minor: int | None, order_total_minor: int | None
) -> RedemptionQuote:
    """Quote by the program's point value and the customer's available points; changes nothing."""
    async with autocommit() as connection:  # one read: no transaction around it
        row = await connection.fetchrow(
            "SELECT a.balance, p.point_value_minor FROM accounts a JOIN programs p ON p.id = a.program_id"
            " WHERE a.program_id = $1 AND a.customer_id = $2 AND a.kind = 'available'",
            program_id,
            customer_id,
        )
    if row is None:
        raise NotFound(f"customer {customer_id} not found", field="customer_id")
    return quote_redemption(customer_id, row["point_value_minor"], row["balance"], discount_minor, order_total_minor)
