"""Helpers of the order tests: a basket, rules in force, and a customer to buy it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

PLACED = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)
RULES = {"currency": "EUR", "points_per_unit": 1, "unit_minor": 100, "category_multipliers": {"coffee": 20000}}


def order_body(customer_id: str, order_id: str = "W-1", **changes: Any) -> dict[str, Any]:
    body = {
        "order_id": order_id,
        "customer_id": customer_id,
        "currency": "EUR",
        "placed_at": PLACED.isoformat(),
        "lines": [
            {"sku": "latte", "category": "coffee", "unit_price": 350, "quantity": 2},
            {"sku": "cake", "category": "bakery", "unit_price": 500, "quantity": 1, "discount": 100},
        ],
    }
    return body | changes
