"""Orders at checkout: award, look up, refund; and the program's return settings."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from service.domain.access import Principal, Scope
from service.domain.clock import Clock
from service.domain.customers import ExternalId
from service.domain.earning import (
    MAX_ORDER_LINES,
    MAX_ORDER_NET,
    AwareDatetime,
    Currency,
    Order,
    OrderLines,
    Refund,
    RefundLine,
)
from service.domain.orders import ReturnPolicy, ReturnSettings
from service.http.auth import requires
from service.http.openapi import BODY_PROBLEM_RESPONSES, PROBLEM_RESPONSES
from service.http.params import CustomerRef, HoldRef, ShopId
from service.usecases import orders
from service.usecases.orders import OrderPlacement, OrderView, RefundView

OrderId = Annotated[str, PathParameter(min_length=1, max_length=200)]


class OrderRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An order; `order_id` is the shop's own id and makes sending it again harmless."""

    order_id: ExternalId
    customer_id: CustomerRef
    currency: Currency
    placed_at: AwareDatetime
    lines: OrderLines
    redemption_hold_id: HoldRef | None = None  # a captured hold of the customer that paid for this order

    def placement(self) -> OrderPlacement:
        order = Order(currency=self.currency, placed_at=self.placed_at, lines=self.lines)
        return OrderPlacement(
            order_id=self.order_id,
            customer_id=self.customer_id,
            order=order,
            redemption_hold_id=self.redemption_hold_id,
        )


class RefundRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Goods returned by line (`lines`), or money returned as an `amount` of net value."""

    refund_id: ExternalId
    lines: Annotated[tuple[RefundLine, ...], msgspec.Meta(max_length=MAX_ORDER_LINES)] = ()
    amount: Annotated[int, msgspec.Meta(ge=1, le=MAX_ORDER_NET)] | None = None


class ReturnSettingsRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    window_days: Annotated[int, msgspec.Meta(ge=0, le=365)]
    policy: ReturnPolicy


class OrderController(Controller):
    """A shop's orders: the shop's order id is the idempotency key."""

    path = "/v1/shops/{shop_id:str}/orders"
    tags = ["orders"]

    @post(
        guards=[requires(Scope.CHECKOUT, Scope.ADMIN)], status_code=HTTP_201_CREATED, responses=BODY_PROBLEM_RESPONSES
    )
    async def place(
        self,
        shop_id: ShopId,
        data: JSONBody[OrderRequest],
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> OrderView:
        """Award an order's points into pending, with the points per rule for the receipt."""
        return await orders.place_order(principal, shop_id, data.placement(), clock)

    @get("/{order_id:str}", guards=[requires(Scope.CHECKOUT, Scope.ADMIN, Scope.FINANCE)], responses=PROBLEM_RESPONSES)
    async def get_order(self, shop_id: ShopId, order_id: OrderId, principal: NamedDependency[Principal]) -> OrderView:
        """The order now: its award, whether its points are released, and its refunds."""
        return await orders.get_order(principal, shop_id, order_id)

    @post(
        "/{order_id:str}/refunds",
        guards=[requires(Scope.CHECKOUT, Scope.ADMIN)],
        status_code=HTTP_201_CREATED,
        responses=BODY_PROBLEM_RESPONSES,
    )
    async def refund(
        self,
        shop_id: ShopId,
        order_id: OrderId,
        data: JSONBody[RefundRequest],
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> RefundView:
        """Take back the refunded part's points; the refund id makes sending it again harmless."""
        refund = Refund(lines=data.lines, amount=data.amount)
        return await orders.refund_order(principal, shop_id, order_id, data.refund_id, refund, clock)


class ReturnSettingsController(Controller):
    path = "/v1/program/returns"
    tags = ["orders"]

    @get(guards=[requires(Scope.ADMIN, Scope.CHECKOUT, Scope.FINANCE)], responses=PROBLEM_RESPONSES)
    async def get_settings(self, principal: NamedDependency[Principal]) -> ReturnSettings:
        """How long goods may come back, and what a refund of spent points does."""
        return await orders.get_return_settings(principal.program_id)

    @put(guards=[requires(Scope.ADMIN)], status_code=HTTP_200_OK, responses=BODY_PROBLEM_RESPONSES)
    async def set_settings(
        self, data: JSONBody[ReturnSettingsRequest], principal: NamedDependency[Principal]
    ) -> ReturnSettings:
        """Change them for orders placed from now on."""
        settings = ReturnSettings(window_days=data.window_days, policy=data.policy)
        return await orders.set_return_settings(principal.program_id, settings)
