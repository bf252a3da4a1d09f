"""Redemption quotes: what a discount costs in points, and the most an order can take."""

from __future__ import annotations

import pytest

from service.domain.errors import InvalidInput
from service.domain.redemption import points_for, quote_redemption


def test_a_discount_costs_whole_points_rounded_up() -> None:
    assert points_for(500, 5) == 100
    assert points_for(501, 5) == 101
    assert points_for(1, 5) == 1
    assert points_for(499, 1) == 499


def test_without_an_order_total_every_available_point_can_be_used() -> None:
    quote = quote_redemption("cus_1", 5, 730)
    assert (quote.customer_id, quote.point_value_minor, quote.available) == ("cus_1", 5, 730)
    assert (quote.points_for_discount, quote.affordable) == (None, None)
    assert (quote.max_points, quote.max_discount_minor) == (730, 3650)


def test_the_order_total_caps_the_points_rounded_down() -> None:
    quote = quote_redemption("cus_1", 5, 730, order_total_minor=1234)
    assert (quote.max_points, quote.max_discount_minor) == (246, 1230)
    rich = quote_redemption("cus_1", 5, 100, order_total_minor=1234)
    assert (rich.max_points, rich.max_discount_minor) == (100, 500)  # the balance is the lower cap
    free = quote_redemption("cus_1", 5, 730, order_total_minor=0)
    assert (free.max_points, free.max_discount_minor) == (0, 0)


@pytest.mark.parametrize(
    ("available", "discount", "total", "needed", "affordable"),
    [
        (730, 500, None, 100, True),
        (100, 500, None, 100, True),  # exactly enough
        (99, 500, None, 100, False),
        (730, 501, None, 101, True),
        (730, 1230, 1234, 246, True),
        (730, 1234, 1234, 247, False),  # 247 points are worth more than the order
        (730, 2000, 1234, 400, False),  # a discount larger than the order
        (0, 1, None, 1, False),
    ],
)
def test_affordable_when_the_discounts_points_are_within_the_maximum(
    available: int, discount: int, total: int | None, needed: int, affordable: bool
) -> None:
    quote = quote_redemption("cus_1", 5, available, discount_minor=discount, order_total_minor=total)
    assert quote.points_for_discount == needed
    assert quote.affordable is affordable
    assert quote.affordable == (quote.points_for_discount <= quote.max_points)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"point_value_minor": 0}, "point_value_minor"),
        ({"discount_minor": 0}, "discount_minor"),
        ({"order_total_minor": -1}, "order_total_minor"),
    ],
)
def test_refuses_values_outside_the_rules(arguments: dict[str, int], field: str) -> None:
    values = {"point_value_minor": 5, "discount_minor": 10, "order_total_minor": 100} | arguments
    with pytest.raises(InvalidInput) as refused:
        quote_redemption("cus_1", available=10, **values)
    assert refused.value.field == field
