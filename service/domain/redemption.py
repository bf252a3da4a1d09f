"""What a customer's points can buy at checkout, free of I/O.

A point is worth the program's `point_value_minor` minor currency units. A discount costs
the points that cover it, rounded up (a point is never split); an order can take at most
the points whose value fits in its total, rounded down (points never pay more than the
order costs).
"""

from __future__ import annotations

import msgspec

from service.domain.errors import InvalidInput


class RedemptionQuote(msgspec.Struct, frozen=True, kw_only=True):
    """What the customer can redeem now; redeeming itself is a hold, then its capture."""

    customer_id: str
    point_value_minor: int
    available: int
    points_for_discount: int | None  # the points a requested discount costs
    affordable: bool | None  # whether those points are within max_points; None without a discount
    max_points: int
    max_discount_minor: int


def points_for(discount_minor: int, point_value_minor: int) -> int:
    """The points a discount costs: ceil(discount / point value)."""
    return -(-discount_minor // point_value_minor)


def quote_redemption(
    customer_id: str,
    point_value_minor: int,
    available: int,
    discount_minor: int | None = None,
    order_total_minor: int | None = None,
) -> RedemptionQuote:
    """The most the customer can redeem (on this order, if its total is given), and what a
    requested discount costs and whether it is within that."""
    if point_value_minor <= 0:
        raise InvalidInput("point_value_minor must be positive", field="point_value_minor")
    if discount_minor is not None and discount_minor < 1:
        raise InvalidInput("discount_minor must be at least 1", field="discount_minor")
    if order_total_minor is not None and order_total_minor < 0:
        raise InvalidInput("order_total_minor must not be negative", field="order_total_minor")
    max_points = max(available, 0)
    if order_total_minor is not None:
        max_points = min(max_points, order_total_minor // point_value_minor)
    needed = None if discount_minor is None else points_for(discount_minor, point_value_minor)
    return RedemptionQuote(
        customer_id=customer_id,
        point_value_minor=point_value_minor,
        available=available,
        points_for_discount=needed,
        affordable=None if needed is None else needed <= max_points,
        max_points=max_points,
        max_discount_minor=max_points * point_value_minor,
    )
